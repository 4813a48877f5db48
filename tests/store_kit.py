"""Helpers (not tests) for the store tests: tiny loadable models as GGUF files, HF directories and hub
cache entries; the CLI run in-process and as a subprocess, always against a temporary HEARTH_HOME."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


import tiny

TIMEOUT = 300
LLAMA32_LICENSE = """LLAMA 3.2 COMMUNITY LICENSE AGREEMENT
Llama 3.2 Version Release Date: September 25, 2024
(a shortened stand-in for the real text, for tests)
"""


@functools.lru_cache(maxsize=None)
def _tiny_parts():
    from hearth.tokenizer import Tokenizer
    from hearth.weights.types import TokenizerData

    model = tiny.random_transformer(vocab_size=tiny.TOKENIZER_VOCAB, max_seq_len=512, tie_embeddings=True, name="tiny")
    cfg = model.config
    state = tiny.state_dict_of(model)
    with tempfile.TemporaryDirectory() as d:  # from_data reads the file at once
        tiny.train_tokenizer().save(str(Path(d) / "tokenizer.json"))
        data = TokenizerData(tokenizer_json=Path(d) / "tokenizer.json", bos_id=0, eos_ids=(2,), pad_id=0, add_bos=False,
                             chat_template=tiny.CHAT_TEMPLATE,
                             special_tokens={"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
        return cfg, state, Tokenizer.from_data(data)


def write_tiny_gguf(path: Path, license: str | None = None, name: str = "Tiny Test", seed_shift: float = 0.0,
                    extra: dict | None = None) -> Path:
    """A loadable 2-layer GGUF (F32, ~0.4 MB). `seed_shift` changes the weights (a different blob)."""
    from hearth.weights.gguf_writer import write_gguf

    cfg, state, tok = _tiny_parts()
    if seed_shift:
        state = {k: v + seed_shift for k, v in state.items()}
    meta = {"general.name": name, **(extra or {})}
    if license is not None:
        meta["general.license"] = license
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_gguf(path, cfg, state, tok, tiny.CHAT_TEMPLATE, metadata=meta)


def write_tiny_hf(directory: Path, readme: str | None = None, license_text: str | None = None) -> Path:
    """A loadable HF directory (config.json, model.safetensors, tokenizer files) plus README/LICENSE if given."""
    from hearth.weights.hf_writer import write_hf

    cfg, state, tok = _tiny_parts()
    write_hf(directory, cfg, state, tok, tiny.CHAT_TEMPLATE)
    if readme is not None:
        (directory / "README.md").write_text(readme)
    if license_text is not None:
        (directory / "LICENSE").write_text(license_text)
    (directory / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # not a model file: not stored
    return directory


def write_hub_entry(cache: Path, repo: str, model_dir: Path, revs: tuple[str, ...] = ("a" * 40,), main: str | None = "a" * 40) -> Path:
    """A Hugging Face hub cache entry, laid out as huggingface_hub does: snapshots/<rev>/<file> are
    relative symlinks into blobs/<hash>."""
    entry = cache / ("models--" + repo.replace("/", "--"))
    blobs = entry / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for rev in revs:
        snap = entry / "snapshots" / rev
        snap.mkdir(parents=True, exist_ok=True)
        for f in sorted(model_dir.iterdir()):
            if f.is_file():
                h = hashlib.sha1(f.read_bytes() + rev.encode()).hexdigest()
                shutil.copyfile(f, blobs / h)
                (snap / f.name).symlink_to(os.path.relpath(blobs / h, snap))
    if main is not None:
        (entry / "refs").mkdir(exist_ok=True)
        (entry / "refs" / "main").write_text(main)
    return entry


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """`hearth ARGS` in-process through hearth.cli.main, as the console script runs it."""
    from hearth.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, HEARTH_HOME=str(home), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)


def run_cli(home: Path, *args: str, timeout: float = TIMEOUT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hearth.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(home, **env))


def one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n.lower() in lines[0].lower(), f"{n!r} not in {lines[0]!r}"
    return lines[0]


def manifest_json(home: Path, name: str) -> dict:
    return json.loads((home / "manifests" / f"{name}.json").read_text())


def blob_files(home: Path) -> list[Path]:
    d = home / "blobs"
    return sorted(d.iterdir()) if d.is_dir() else []


def flip_byte(path: Path, offset: int = -1) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
