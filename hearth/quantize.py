"""Re-quantize a model's weights to 8 or 4 bits as a GGUF file, and measure what that costs and buys.

`quantize_model` reads every tensor dequantized to fp32 (whatever the source stores: F32, F16, Q4_1, a
Hugging Face directory), then writes each 2-D weight, the token embedding included, in a GGUF block
format with llama.cpp's layout (gguf.quants' numpy quantizers, through `write_gguf`):

    int8 → Q8_0   blocks of 32 weights: one fp16 scale + 32 int8          (8.5 bits per weight)
    int4 → Q4_1   blocks of 32 weights: fp16 scale and minimum + 32 uint4  (5 bits per weight)
           Q4_0   (q4_0) fp16 scale + 32 int4, symmetric                   (4.5 bits per weight)

Norms stay F32. A GGUF block is always 32 weights, so the group size is fixed at 32. The result goes
to a file, and by default into hearth's store under `<model>-int8` / `<model>-int4`, where every command
can use it by name. `compare` measures size, perplexity on the Austen novels and decode speed before
and after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hearth.errors import HearthError
from hearth.store import lineage as L
from hearth.store.common import refuse_overwrite, replacing

# --to value -> GGUF type
SCHEMES = {"int8": "Q8_0", "int4": "Q4_1", "q8_0": "Q8_0", "q4_1": "Q4_1", "q4_0": "Q4_0"}
GROUP_SIZE = 32  # weights per GGUF block (QK8_0 = QK4_0 = QK4_1 = 32)
# general.* keys write_gguf sets itself; every other general.* key (license, organization, ...) is kept.
_OWN_KEYS = {"general.architecture", "general.type", "general.file_type", "general.quantization_version"}
DECODE_PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune,"


def qtype_for(to: str, group_size: int = GROUP_SIZE) -> str:
    """The GGUF type for a --to value; one-line errors for anything else."""
    qtype = SCHEMES.get(to.lower())
    if qtype is None:
        raise HearthError(f"unknown --to {to!r}; choose int8 (Q8_0) or int4 (Q4_1), or q4_0")
    if group_size != GROUP_SIZE:
        raise HearthError(f"--group-size {group_size} is not possible: GGUF {qtype} blocks hold exactly {GROUP_SIZE} weights; use --group-size 32")
    return qtype


def default_store_name(ref: str, to: str) -> str:
    """`smollm2` → `smollm2-int8`; a path → its file or directory name, cleaned, plus the suffix."""
    from hearth.store.manifest import check_name
    from hearth.store.sources import default_name

    p = Path(ref).expanduser()
    base = default_name(p.stem if p.suffix.lower() == ".gguf" else p.name) if p.exists() else ref
    return check_name(f"{base}-{to.lower()}"[:100])


@dataclass
class Quantized:
    path: Path  # the GGUF written (inside the store when stored and no -o was given)
    qtype: str
    name: str | None  # the store name, when it was added to the store
    n_quantized: int  # 2-D weights written in qtype
    seconds: float


def quantize_model(
    ref: str,
    to: str = "int8",
    group_size: int = GROUP_SIZE,
    output: Path | None = None,
    name: str | None = None,
    store: bool = True,
    progress: bool = False,
    force: bool = False,
) -> Quantized:
    """Re-quantize model `ref` (store name, path, or `smollm2`). With `output`, write that file; with
    `store` (default when no `output`), add it to the store as `name` (default `<model>-<to>`). An existing
    `output` file or store model `name` is replaced only with `force` (else HearthError before any work); the file
    is written beside its place and renamed into it."""
    from hearth.loader import resolve_model
    from hearth.tokenizer import Tokenizer
    from hearth.weights import open_checkpoint

    qtype = qtype_for(to, group_size)
    if output is not None:
        output = Path(output).expanduser()
        if not output.parent.is_dir():
            raise HearthError(f"cannot write {output}: the directory {output.parent} does not exist")
        if output.is_dir():
            raise HearthError(f"cannot write {output}: it is a directory; give a file name such as {output / 'model.gguf'}")
        if output.exists() and os.path.samefile(output, resolve_model(ref)):
            raise HearthError(f"-o {output} is the model being quantized; write the result to another file")
        refuse_overwrite(output, force)
    if store:
        from hearth.store.manifest import check_name

        name = check_name(name) if name else default_store_name(ref, to)
        if name == ref:
            raise HearthError(f"--name {name} would replace the model being quantized; choose another name")
        from hearth.store import Store

        if not force and Store().exists(name):
            raise HearthError(f"a model named {name!r} is already in the store; --force replaces it, "
                              "--name NEW stores this one beside it")
    elif output is None:
        raise HearthError("nowhere to put the quantized model: give an output file or let it go into the store")
    t0 = time.perf_counter()
    src = resolve_model(ref)
    ckpt = open_checkpoint(src)
    cfg = ckpt.config
    # a GGUF source's vocabulary is copied as it is; a tokenizer.json is converted from the built tokenizer
    tokenizer = ckpt.tokenizer if ckpt.tokenizer.gguf is not None else Tokenizer.from_data(ckpt.tokenizer)
    names = [n for n in ckpt.tensors if not (cfg.tie_embeddings and n == "output.weight")]
    metadata = {k: v for k, v in ckpt.metadata.items()
                if k.startswith("general.") and k not in _OWN_KEYS and not k.startswith("general.base_model.")}
    metadata["general.quantized_by"] = "hearth"
    # the source is this model's base (Hugging Face's base_model_relation: quantized); its own record goes along
    metadata.update(L.gguf_metadata(L.step("quantize", ref, ckpt, {"to": to.lower(), "qtype": qtype,
                                                                     "from": ckpt.quantization})))
    tmpdir = Path(tempfile.mkdtemp(prefix="hearth-quantize-")) if output is None else None
    try:
        with contextlib.ExitStack() as stack:
            target = stack.enter_context(replacing(output, ".gguf")) if output is not None else tmpdir / f"{name}.gguf"
            n_quant = _write(ckpt, target, qtype, tokenizer, names, metadata, progress)
        path = output if output is not None else target
        if store:
            from hearth.store import Store
            from hearth.store.progress import Progress

            Store().pull(str(path), name=name, progress=Progress(enabled=progress), force=force,
                         source_label=f"hearth quantize {ref} --to {to} ({ckpt.quantization} -> {qtype})")
            if output is None:
                path = resolve_model(name)
    except OSError as e:
        raise HearthError(f"cannot write {output or name}: {e.strerror or e}") from None
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return Quantized(path, qtype, name if store else None, n_quant, time.perf_counter() - t0)


def keep_embeddings_8bit(qtype: str) -> dict[str, str] | None:
    """4-bit: the embedding (and output) matrix stays 8-bit, as llama.cpp's own Q4 mixes keep it higher: it is the
    most sensitive matrix (on smollm2, where it is tied, Q4_1 there alone costs ~10% perplexity)."""
    return {n: "Q8_0" for n in ("tok_embeddings.weight", "output.weight")} if qtype.startswith("Q4") else None


def _write(ckpt, target: Path, qtype: str, tokenizer, names: list[str], metadata: dict, progress: bool) -> int:
    """Read `names` from `ckpt` dequantized to fp32 and write them to `target` as `qtype`; the 2-D weights written."""
    from hearth.weights.gguf_writer import write_gguf

    with _Bar(progress, 2 * len(names)) as advance:
        state: dict[str, torch.Tensor] = {}
        for n in names:
            state[n] = ckpt.tensors[n]().to(torch.float32)  # dequantized, whatever the source stores
            advance(f"reading {n}")
        write_gguf(target, ckpt.config, state, tokenizer, chat_template=ckpt.tokenizer.chat_template, qtype=qtype,
                   metadata=metadata, on_tensor=lambda n: advance(f"{qtype} {n}"), tensor_qtypes=keep_embeddings_8bit(qtype))
        return sum(1 for t in state.values() if t.dim() == 2)


# ---------------------------------------------------------------------------------------------- measuring


def weight_bytes(path: Path) -> int:
    """Bytes of tensor data: a GGUF's tensors, or a Hugging Face directory's safetensors files."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.safetensors"))
    from hearth.weights.gguf_file import GGUFFile

    return sum(info.n_bytes for info in GGUFFile(path).tensors.values())


def file_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


@torch.inference_mode()
def decode_speed(loaded, n_tokens: int = 32, repeats: int = 3, prompt: str = DECODE_PROMPT) -> float:
    """Greedy decode tokens per second through hearth's Generator (the path `hearth run` takes): whatever fast
    path the loaded model uses is what is timed. Each run is timed from the first generated token to the last,
    so the prompt's prefill is not counted; the best of `repeats` runs is returned, since on a shared machine
    the slower runs measure the neighbours."""
    from hearth.engine.generate import Generator
    from hearth.engine.sampling import SamplingParams

    if n_tokens < 1 or repeats < 1:
        raise HearthError(f"decode speed needs at least 1 token and 1 run, not {n_tokens} and {repeats}")
    gen = Generator(loaded.model, loaded.tokenizer, decoder=loaded.decoder)
    ids = loaded.tokenizer.encode(prompt)
    gen.complete(ids, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))  # warm-up: first-call costs
    params = SamplingParams(max_tokens=n_tokens + 1, temperature=0.0, ignore_eos=True)
    best = 0.0
    for _ in range(repeats):
        times = [time.perf_counter() for c in gen.stream(ids, params) if c.token_id is not None]
        best = max(best, (len(times) - 1) / (times[-1] - times[0]))
    return best


@dataclass
class Measurement:
    label: str
    quantization: str
    weight_bytes: int
    file_bytes: int
    ppl: float | None
    ppl_err: float | None
    decode_tps: float | None


def compare(before: str, after: str, ppl_chunks: int = 2, n_ctx: int = 512, decode_tokens: int = 32,
            progress: bool = False, kernels: bool = True) -> list[Measurement]:
    """Size, perplexity (llama-perplexity's protocol, the first `ppl_chunks` chunks of the Austen novels;
    0: skipped) and decode tokens/s of a model and its quantized copy, on the same token ids (kernels: load's)."""
    from hearth.eval.perplexity import check_args

    check_args(n_ctx, ppl_chunks or None)
    text = None
    if ppl_chunks > 0:
        from hearth.eval.corpus import austen_text

        # enough for the chunks asked for: English prose is about 4 characters a token; keep a margin of 2
        text = austen_text()[: 8 * n_ctx * ppl_chunks]
    out = []
    for label, ref in (("before", before), ("after", after)):
        out.append(_measure(label, ref, text, n_ctx, ppl_chunks, decode_tokens, progress, kernels))
    return out


def _measure(label: str, ref: str, text: str | None, n_ctx: int, ppl_chunks: int, decode_tokens: int,
             progress: bool, kernels: bool = True) -> Measurement:
    from hearth.eval.perplexity import text_perplexity
    from hearth.loader import load, resolve_model

    path = resolve_model(ref)
    lm = load(str(path), progress=progress, kernels=kernels)
    ppl = err = tps = None
    if text is not None:
        r = text_perplexity(lm, text, n_ctx=n_ctx, max_chunks=ppl_chunks, progress=progress)
        ppl, err = r.ppl, r.ppl_err
    if decode_tokens > 0:
        tps = decode_speed(lm, decode_tokens)
    return Measurement(label, lm.checkpoint.quantization, weight_bytes(path), file_bytes(path), ppl, err, tps)


def report_table(rows: list[Measurement], ppl_chunks: int, n_ctx: int):
    """A rich Table: one column per measurement, and the change from the first to the last."""
    from rich.table import Table

    from hearth.store.common import human_bytes

    first, last = rows[0], rows[-1]

    def change(a: float | None, b: float | None, fmt: str) -> str:
        if a is None or b is None or a == 0:
            return ""
        return format(b / a, fmt)

    t = Table(title="quantization report", title_justify="left")
    t.add_column("")
    for r in rows:
        t.add_column(r.label, justify="right")
    t.add_column("after / before", justify="right")
    t.add_row("weight type", *[r.quantization for r in rows], "")
    t.add_row("weights", *[human_bytes(r.weight_bytes) for r in rows], change(first.weight_bytes, last.weight_bytes, ".3f"))
    t.add_row("file", *[human_bytes(r.file_bytes) for r in rows], change(first.file_bytes, last.file_bytes, ".3f"))
    if first.ppl is not None:
        t.add_row(f"PPL Austen {ppl_chunks}x{n_ctx}", *[f"{r.ppl:.4f} ± {r.ppl_err:.3f}" for r in rows],
                  change(first.ppl, last.ppl, ".4f"))
    if first.decode_tps is not None:
        t.add_row("decode tok/s", *[f"{r.decode_tps:.1f}" for r in rows], change(first.decode_tps, last.decode_tps, ".2f"))
    return t


class _Bar:
    """A rich progress bar on stderr over the tensors read and written; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda what: None
        from hearth import progress

        self.bar = progress.bar("quantizing", ":bar", ":count", "{task.fields[what]}", ":elapsed")
        self.bar.__enter__()
        tid = self.bar.add_task("q", total=self.total, what="")
        return lambda what: self.bar.update(tid, advance=1, what=what)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
