"""Every bad input reaches the user as one line on stderr, `error: ...`, a non-zero exit and no traceback.

Every case runs in-process through `hearth.cli.main` (the console script's entry point); the parser
errors and one case of each other kind also run as a real `python -m hearth.cli` subprocess. All fail
before any weights are loaded. Running as root, chmod 000 cannot make a file unreadable, so that case
is skipped there; a FIFO and /dev/null stand in for paths that cannot be read as a file.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from hearth.loader import resolve_model
from hearth.weights.gguf_file import GGUFFile, _Cursor

TIMEOUT = 120


def run_cli(*args: str, stdin: str | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "hearth.cli", *args],
        input=stdin if stdin is not None else "",
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{r.stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for n in needles:
        assert n.lower() in line.lower(), f"{n!r} not in {line!r}"
    assert r.returncode != 0
    if code is not None:
        assert r.returncode == code, (r.returncode, line)
    assert r.stdout == "", r.stdout
    return line


# ---------------------------------------------------------------- building bad files


def write_gguf(path: Path, arch: str = "llama", *, config: bool = True, vocab: bool = True, tensors=None, name: str | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    if name is not None:
        w.add_name(name)
    if config:
        for key, v in (("block_count", 1), ("embedding_length", 8), ("attention.head_count", 2),
                       ("feed_forward_length", 16), ("context_length", 64)):
            w.add_uint32(f"{arch}.{key}", v)
    if vocab:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(["a", "b", "c", "d"])
    for tname, arr in (tensors if tensors is not None else {"token_embd.weight": np.zeros((4, 8), np.float32)}).items():
        w.add_tensor(tname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def patch_after(path: Path, marker: bytes, skip: int, fmt: str, value: int) -> None:
    """Overwrite the `fmt` field `skip` bytes after the first occurrence of `marker`."""
    data = bytearray(path.read_bytes())
    at = data.index(marker) + len(marker) + skip
    struct.pack_into(fmt, data, at, value)
    path.write_bytes(bytes(data))


def copy_head(src: Path, dst: Path, n: int) -> Path:
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read(n))
    return dst


def default_model_layout(path: Path) -> dict[str, int]:
    """Byte offsets where the default GGUF's metadata ends and its tensor data starts."""
    f = GGUFFile(path)
    cur = _Cursor(memoryview(f.mm), path)
    cur.pos = 24
    for _ in range(len(f.metadata)):
        cur.string()
        cur.value(cur.scalar("<I"))
    data_start = min(i.offset for i in f.tensors.values())
    return {"meta_end": cur.pos, "data_start": data_start, "size": len(f.mm)}


def write_hf(d: Path, config: dict | str | None, *, index: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if index is not None:
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


LLAMA_CONFIG = {
    "model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
    "intermediate_size": 16, "vocab_size": 4, "max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    t = tmp_path_factory.mktemp("bad")
    model = resolve_model("smollm2")
    layout = default_model_layout(model)
    assert 1000 < layout["meta_end"] < layout["data_start"] - 1000, layout
    p: dict[str, Path] = {}

    p["missing"] = t / "nope.gguf"
    p["empty_dir"] = t / "emptydir"
    p["empty_dir"].mkdir()
    p["dir_named_gguf"] = t / "model.gguf"
    p["dir_named_gguf"].mkdir()
    p["fifo"] = t / "fifo.gguf"
    os.mkfifo(p["fifo"])
    p["empty_file"] = t / "empty.gguf"
    p["empty_file"].write_bytes(b"")
    p["text_file"] = t / "notes.gguf"
    p["text_file"].write_text("this is not a model\n" * 10)
    p["safetensors_file"] = t / "model.safetensors"
    p["safetensors_file"].write_bytes(struct.pack("<Q", 2) + b"{}")
    p["unreadable"] = copy_head(model, t / "unreadable.gguf", 4096)
    os.chmod(p["unreadable"], 0)

    # the default model cut short at each stage of the file
    p["trunc_magic"] = copy_head(model, t / "trunc_magic.gguf", 3)
    p["trunc_header"] = copy_head(model, t / "trunc_header.gguf", 16)
    p["trunc_metadata_early"] = copy_head(model, t / "trunc_meta1.gguf", 200)
    p["trunc_metadata"] = copy_head(model, t / "trunc_meta2.gguf", layout["meta_end"] // 2)
    p["trunc_tensor_index"] = copy_head(model, t / "trunc_index.gguf", (layout["meta_end"] + layout["data_start"]) // 2)
    p["trunc_tensor_data"] = copy_head(model, t / "trunc_data.gguf", layout["size"] // 2)
    p["trunc_last_byte"] = copy_head(model, t / "trunc_last.gguf", layout["size"] - 1)

    # small hand-made GGUFs
    p["gguf_gpt2"] = write_gguf(t / "gpt2.gguf", "gpt2")
    p["gguf_missing_keys"] = write_gguf(t / "nokeys.gguf", config=False)
    p["gguf_bad_version"] = write_gguf(t / "version.gguf")
    patch_after(p["gguf_bad_version"], b"GGUF", 0, "<I", 7)
    p["gguf_bad_tensor_type"] = write_gguf(t / "badtype.gguf")
    # tensor index entry: name, n_dims (u32), dims (2 x u64), type (u32)
    patch_after(p["gguf_bad_tensor_type"], b"token_embd.weight", 4 + 16, "<I", 200)
    p["gguf_bad_metadata_type"] = write_gguf(t / "badkv.gguf", name="tiny")
    patch_after(p["gguf_bad_metadata_type"], b"general.name", 0, "<I", 99)
    p["gguf_unsupported_quant"] = write_gguf(t / "i8.gguf", tensors={"token_embd.weight": np.zeros((4, 8), np.int8)})
    p["gguf_no_tokenizer"] = write_gguf(t / "novocab.gguf", vocab=False)

    # Hugging Face directories
    p["hf_bad_json"] = write_hf(t / "hf_bad_json", '{"model_type": "llama", "hidden_size": 8,')
    p["hf_unknown_type"] = write_hf(t / "hf_gpt2", dict(LLAMA_CONFIG, model_type="gpt2"))
    p["hf_missing_key"] = write_hf(t / "hf_nokey", {k: v for k, v in LLAMA_CONFIG.items() if k != "hidden_size"})
    p["hf_no_weights"] = write_hf(t / "hf_noweights", LLAMA_CONFIG)
    shards = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors", "lm_head.weight": "model-00002-of-00002.safetensors"}
    p["hf_missing_shard"] = write_hf(t / "hf_shard", LLAMA_CONFIG, index={"weight_map": shards})
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(4, 8)}, str(p["hf_missing_shard"] / "model-00001-of-00002.safetensors"))
    p["hf_bad_safetensors"] = write_hf(t / "hf_badst", LLAMA_CONFIG)
    (p["hf_bad_safetensors"] / "model.safetensors").write_bytes(b"\x00" * 64)
    yield p
    os.chmod(p["unreadable"], 0o600)


# case id -> (argv with {name} placeholders for paths in `bad`, words the error line must contain, exit code)
CASES: dict[str, tuple[list[str], list[str], int]] = {
    "missing_file": (["generate", "{missing}", "hi"], ["model not found", "nope.gguf"], 1),
    "missing_file_run": (["run", "{missing}", "hi"], ["model not found", "nope.gguf"], 1),
    "dir_without_config": (["generate", "{empty_dir}", "hi"], ["emptydir", "no config.json"], 1),
    "dir_named_like_gguf": (["generate", "{dir_named_gguf}", "hi"], ["model.gguf", "no config.json"], 1),
    "fifo": (["generate", "{fifo}", "hi"], ["fifo.gguf", "not a regular file"], 1),
    "device_file": (["generate", "/dev/null", "hi"], ["/dev/null", "not a regular file"], 1),
    "unreadable_file": (["generate", "{unreadable}", "hi"], ["unreadable.gguf", "cannot read", "permission"], 1),
    "empty_file": (["generate", "{empty_file}", "hi"], ["empty.gguf", "empty"], 1),
    "text_file": (["generate", "{text_file}", "hi"], ["notes.gguf", "not a GGUF file"], 1),
    "safetensors_file": (["generate", "{safetensors_file}", "hi"], ["model.safetensors", "not a GGUF file"], 1),
    "truncated_in_magic": (["generate", "{trunc_magic}", "hi"], ["trunc_magic.gguf", "not a GGUF file"], 1),
    "truncated_in_header": (["generate", "{trunc_header}", "hi"], ["trunc_header.gguf", "truncated"], 1),
    "truncated_in_first_keys": (["generate", "{trunc_metadata_early}", "hi"], ["trunc_meta1.gguf", "truncated"], 1),
    "truncated_in_metadata": (["generate", "{trunc_metadata}", "hi"], ["trunc_meta2.gguf", "truncated"], 1),
    "truncated_in_tensor_index": (["generate", "{trunc_tensor_index}", "hi"], ["trunc_index.gguf", "truncated"], 1),
    "truncated_in_tensor_data": (["generate", "{trunc_tensor_data}", "hi"], ["trunc_data.gguf", "truncated", "ends at byte"], 1),
    "truncated_last_byte": (["run", "{trunc_last_byte}", "hi"], ["trunc_last.gguf", "truncated", "ends at byte"], 1),
    "gguf_unsupported_arch": (["generate", "{gguf_gpt2}", "hi"], ["architecture 'gpt2' is not supported"], 1),
    "gguf_missing_keys": (["generate", "{gguf_missing_keys}", "hi"], ["metadata key llama.", "missing"], 1),
    "gguf_bad_version": (["generate", "{gguf_bad_version}", "hi"], ["GGUF version 7"], 1),
    "gguf_bad_tensor_type": (["generate", "{gguf_bad_tensor_type}", "hi"], ["token_embd.weight", "unknown type id 200"], 1),
    "gguf_bad_metadata_type": (["generate", "{gguf_bad_metadata_type}", "hi"], ["unknown metadata type 99"], 1),
    "gguf_unsupported_quant": (["generate", "{gguf_unsupported_quant}", "hi"], ["I8", "not supported"], 1),
    "gguf_no_tokenizer": (["generate", "{gguf_no_tokenizer}", "hi"], ["tokenizer"], 1),
    "hf_bad_json": (["generate", "{hf_bad_json}", "hi"], ["config.json", "not valid JSON"], 1),
    "hf_unknown_model_type": (["generate", "{hf_unknown_type}", "hi"], ["model_type 'gpt2' is not supported"], 1),
    "hf_missing_config_key": (["generate", "{hf_missing_key}", "hi"], ["config.json", "hidden_size"], 1),
    "hf_no_weights": (["generate", "{hf_no_weights}", "hi"], ["no model.safetensors"], 1),
    "hf_missing_shard": (["generate", "{hf_missing_shard}", "hi"], ["model-00002-of-00002.safetensors", "missing"], 1),
    "hf_bad_safetensors": (["generate", "{hf_bad_safetensors}", "hi"], ["model.safetensors", "not a readable safetensors"], 1),
    # option values the parser rejects (before importing torch)
    "temperature_negative": (["generate", "smollm2", "hi", "--temperature", "-1"], ["--temperature"], 2),
    "temperature_not_a_number": (["run", "smollm2", "hi", "--temperature", "warm"], ["--temperature"], 2),
    "top_p_above_one": (["generate", "smollm2", "hi", "--top-p", "2"], ["--top-p"], 2),
    "top_k_negative": (["run", "smollm2", "hi", "--top-k", "-3"], ["--top-k"], 2),
    "min_p_above_one": (["generate", "smollm2", "hi", "--min-p", "1.5"], ["--min-p"], 2),
    "max_tokens_negative": (["generate", "smollm2", "hi", "--max-tokens", "-5"], ["--max-tokens"], 2),
    "seed_negative": (["generate", "smollm2", "hi", "--seed", "-1"], ["--seed"], 2),
    "repeat_penalty_zero": (["generate", "smollm2", "hi", "--repeat-penalty", "0"], ["--repeat-penalty"], 2),
    "unknown_option": (["generate", "smollm2", "hi", "--bogus"], ["--bogus"], 2),
    "unknown_command": (["frobnicate"], ["frobnicate"], 2),
    "missing_prompt": (["generate", "smollm2"], ["prompt"], 2),
    "extra_argument": (["generate", "smollm2", "hi", "there"], ["there"], 2),
    # values the parser lets through but SamplingParams rejects, before anything is loaded
    "repeat_penalty_inf": (["generate", "smollm2", "hi", "--repeat-penalty", "inf"], ["repetition_penalty", "finite"], 1),
    # option values checked when loading (before reading any weights)
    "device_unknown": (["generate", "smollm2", "hi", "--device", "tpu"], ["tpu"], 1),
    "device_garbage": (["run", "smollm2", "hi", "--device", "cuda:x"], ["cuda:x"], 1),
    "device_cuda_without_gpu": (["generate", "smollm2", "hi", "--device", "cuda"], ["cuda", "no CUDA GPU"], 1),
    "device_cuda_index_without_gpu": (["run", "smollm2", "hi", "--device", "cuda:1"], ["no CUDA GPU"], 1),
    "dtype_unknown": (["generate", "smollm2", "hi", "--dtype", "int3"], ["int3", "dtype"], 1),
    "kv_cache_unknown": (["run", "smollm2", "hi", "--kv-cache", "q4_0"], ["q4_0", "KV cache", "f16"], 1),
}

XFAIL: dict[str, str] = {}


def _skip_reason(case: str) -> str | None:
    if case == "unreadable_file" and os.geteuid() == 0:
        return "running as root: chmod 000 does not stop root from reading (fifo/device cases cover unopenable paths)"
    if case.startswith("device_cuda") and torch.cuda.is_available():
        return "a CUDA GPU is present"
    return None


def _argv(case: str, bad: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in bad.items()}) for a in CASES[case][0]]


def _params(cases):
    return [pytest.param(c, marks=pytest.mark.xfail(reason=XFAIL[c], strict=True)) if c in XFAIL else c for c in cases]


# Every case runs in-process through `hearth.cli.main` (the console script's entry point): cheap, since
# torch is imported once. A subprocess costs a fresh interpreter and torch import (seconds on 2 cores), so
# the real executable runs every case that fails in the parser (no torch import) plus one of each kind
# of failure that gets past it.
PARSER_CASES = [c for c, (_, _, code) in CASES.items() if code == 2]
SUBPROCESS_CASES = PARSER_CASES + ["missing_file_run", "truncated_in_tensor_data", "hf_missing_shard", "dtype_unknown"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", _params(CASES))
def test_bad_input_in_process(case, bad, capsys):
    from hearth.cli import main

    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    _, needles, code = CASES[case]
    rc = main(_argv(case, bad))
    out, err = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], rc, out, err), *needles, code=code)


@pytest.fixture(scope="module")
def results(bad):
    """Start the subprocess cases (three at a time) and hand each test its own future."""
    pool = ThreadPoolExecutor(max_workers=3)
    futures = {c: pool.submit(run_cli, *_argv(c, bad)) for c in SUBPROCESS_CASES if not _skip_reason(c)}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("case", _params(SUBPROCESS_CASES))
def test_bad_input_subprocess(case, results):
    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    _, needles, code = CASES[case]
    assert_one_line_error(results[case].result(), *needles, code=code)


def test_usage_errors_point_at_help(results):
    line = results["top_p_above_one"].result().stderr
    assert "hearth generate --help" in line


def test_truncation_points_are_where_the_test_says(bad):
    """The truncated copies really stop in the region each case names (guards the fixture itself)."""
    model = resolve_model("smollm2")
    layout = default_model_layout(model)
    assert bad["trunc_header"].stat().st_size < 24
    assert 24 < bad["trunc_metadata_early"].stat().st_size < layout["meta_end"]
    assert 24 < bad["trunc_metadata"].stat().st_size < layout["meta_end"]
    assert layout["meta_end"] < bad["trunc_tensor_index"].stat().st_size < layout["data_start"]
    assert layout["data_start"] < bad["trunc_tensor_data"].stat().st_size < layout["size"]
