"""`hearth quantize`: GGUF Q8_0 / Q4_1 / Q4_0 written from a model's dequantized weights, read back by hearth's
own reader within each block's rounding bound; the store entry it makes runs; bad inputs are one-line errors;
on the real default model int8 costs only a fraction of a percent of perplexity.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny
from hearth.cli import main
from hearth.errors import HearthError
from hearth.loader import load
from hearth.quantize import compare, decode_speed, default_store_name, qtype_for, quantize_model
from hearth.weights import open_checkpoint
from hearth.weights.gguf_writer import write_gguf


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny random SmolLM-shaped model (tied embeddings, GQA) as an F32 GGUF with its tokenizer and template."""
    root = tmp_path_factory.mktemp("quant")
    directory = tiny.save_hf_model(tiny.make_hf_model("smollm_tied"), root / "tiny-smollm")
    lm = load(str(directory), dtype="float32")
    return write_gguf(root / "tiny-smollm.gguf", lm.model.config, tiny.state_dict_of(lm.model), lm.tokenizer,
                      lm.chat_template.source)


@pytest.fixture(scope="module")
def original(tiny_gguf) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(tiny_gguf)
    return {n: lazy() for n, lazy in ckpt.tensors.items()}


def block_bound(w: np.ndarray, qtype: str) -> np.ndarray:
    """Largest error each weight may have after a round trip through its 32-weight block (fp16 scales included)."""
    b = w.reshape(-1, 32)
    if qtype == "Q8_0":  # d = absmax / 127, q = round(x / d)
        d = np.abs(b).max(axis=1, keepdims=True) / 127
        bound = 0.5 * d + 127 * d * 2**-10
    elif qtype == "Q4_1":  # d = (max - min) / 15, m = min, q = round((x - m) / d)
        lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
        d = (hi - lo) / 15
        bound = 0.5 * d + 15 * d * 2**-10 + np.abs(lo) * 2**-10
    else:  # Q4_0: d = (value of largest magnitude) / -8, q = clip(round(x / d) + 8, 0, 15): one end saturates
        d = np.abs(b).max(axis=1, keepdims=True) / 8
        bound = 1.0 * d + 8 * d * 2**-10
    return np.broadcast_to(bound + 1e-7, b.shape).reshape(w.shape)


@pytest.mark.parametrize("to, qtype", [("int8", "Q8_0"), ("int4", "Q4_1"), ("q4_0", "Q4_0")])
def test_round_trip_through_hearths_reader(tiny_gguf, original, tmp_path, to, qtype):
    out = tmp_path / f"tiny.{to}.gguf"
    q = quantize_model(str(tiny_gguf), to=to, output=out, store=False)
    assert (q.path, q.qtype, q.name) == (out, qtype, None)
    ckpt = open_checkpoint(out)
    assert ckpt.quantization == qtype
    assert set(ckpt.tensors) == set(original)
    for name, t in original.items():
        want = qtype if t.dim() == 2 else "F32"
        if qtype.startswith("Q4") and name in ("tok_embeddings.weight", "output.weight"):
            want = "Q8_0"  # 4-bit mixes keep the embedding/output matrix at 8 bits, as llama.cpp's do
        assert ckpt.tensor_types[name] == want, name
        back = ckpt.tensors[name]().numpy()
        w = t.numpy()
        assert back.shape == w.shape, name
        if t.dim() == 1:
            assert np.array_equal(back, w), name
            continue
        err = np.abs(back - w)
        assert (err <= block_bound(w, want)).all(), f"{name}: error {err.max():.3g} beyond its block's bound"
        assert err.max() > 0  # it really was quantized
    assert ckpt.metadata.get("general.quantized_by") == "hearth"
    assert open_checkpoint(tiny_gguf).tokenizer.gguf.tokens == ckpt.tokenizer.gguf.tokens


def test_store_entry_exists_and_runs(tiny_gguf, tmp_path, monkeypatch):
    from hearth.engine.generate import Generator
    from hearth.engine.sampling import SamplingParams
    from hearth.store import Store

    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    q = quantize_model(str(tiny_gguf), to="int4")
    assert q.name == "tiny-smollm-int4" and Store().exists(q.name)
    m = Store().get(q.name)
    assert m.format == "gguf" and m.summary.quantization == "Q4_1"
    lm = load(q.name)
    assert lm.checkpoint.quantization == "Q4_1"
    out = Generator(lm.model, lm.tokenizer).complete(lm.tokenizer.encode("The licenses"), SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    assert len(out.token_ids) == 5
    assert decode_speed(lm, 4) > 0
    # -o and --name together: the file is written and also stored
    q2 = quantize_model(q.name, to="int8", output=tmp_path / "x.gguf", name="tiny8")
    assert q2.path == tmp_path / "x.gguf" and q2.path.is_file() and Store().exists("tiny8")


def test_default_store_names(tiny_gguf):
    assert default_store_name("smollm2", "int8") == "smollm2-int8"
    assert default_store_name(str(tiny_gguf), "INT4") == "tiny-smollm-int4"


@pytest.mark.parametrize("to, group, needle", [
    ("int3", 32, "unknown --to 'int3'"),
    ("int8", 64, "--group-size 64 is not possible: GGUF Q8_0 blocks hold exactly 32 weights"),
    ("int4", 128, "--group-size 128 is not possible"),
])
def test_bad_scheme_is_one_line(to, group, needle):
    with pytest.raises(HearthError, match=needle.replace("(", r"\(")) as e:
        qtype_for(to, group)
    assert "\n" not in str(e.value)


def _cli_error(capsys, *argv: str) -> str:
    rc = main(list(argv))
    out = capsys.readouterr()
    lines = out.err.strip("\n").splitlines()
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert "Traceback" not in out.err and out.out == ""
    return lines[0]


@pytest.mark.parametrize("argv, needle", [
    (["quantize", "smollm2", "--to", "int2"], "unknown --to 'int2'"),
    (["quantize", "smollm2", "--to", "int8", "--group-size", "16"], "blocks hold exactly 32 weights"),
    (["quantize", "no-such-model", "--to", "int8", "--ppl-chunks", "0"], "model not found"),
    (["quantize", "smollm2", "--to", "int8", "-o", "/nonexistent-dir/q.gguf", "--ppl-chunks", "0"], "does not exist"),
    (["quantize", "smollm2", "--to", "int8", "--name", "Bad Name!", "--ppl-chunks", "0"], "Bad Name!"),
    (["quantize", "smollm2"], "--to"),
    (["perplexity", "smollm2", "--ctx", "15"], "even number"),
    (["perplexity", "smollm2", "--corpus", "shakespeare"], "unknown --corpus 'shakespeare'"),
    (["perplexity", "smollm2", "--book", "ulysses"], "unknown Austen novel 'ulysses'"),
    (["perplexity", "smollm2", "--text", "/nonexistent.txt"], "text file not found"),
    (["perplexity", "smollm2", "--text", "/etc/hostname", "--corpus", "austen"], "either --text FILE or --corpus"),
])
def test_cli_bad_inputs_are_one_line(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    assert needle.lower() in _cli_error(capsys, *argv).lower()
    assert not (tmp_path / "home" / "manifests").exists() or not list((tmp_path / "home" / "manifests").iterdir())


def test_cli_quantize_then_perplexity(tiny_gguf, tmp_path, monkeypatch, capsys):
    from hearth.eval.corpus import PACKAGE_DIR

    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    chunks = "1" if (PACKAGE_DIR / "data" / "Rdata.rdb").is_file() else "0"
    rc = main(["quantize", str(tiny_gguf), "--to", "int8", "--ppl-chunks", chunks, "--ctx", "64", "--decode-tokens", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "stored as tiny-smollm-int8" in out and "quantization report" in out and "Q8_0" in out
    if chunks == "1":
        assert "PPL Austen 1x64" in out
    text = tmp_path / "gpl.txt"
    text.write_text(tiny.CORPUS.read_text()[:4000])
    rc = main(["perplexity", "tiny-smollm-int8", "--text", str(text), "--ctx", "32", "--max-chunks", "2", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and (r["n_chunks"], r["count"], r["count_all"]) == (2, 2 * 15, 2 * 31)
    assert r["ppl"] > 1 and r["ppl_err"] > 0


@pytest.mark.slow
def test_int8_keeps_the_default_models_perplexity(tmp_path):
    from hearth.eval.corpus import INSTALL_HINT, PACKAGE_DIR

    if not (PACKAGE_DIR / "data" / "Rdata.rdb").is_file():
        pytest.skip(f"the Austen corpus is not installed: {INSTALL_HINT}")
    q = quantize_model("smollm2", to="int8", output=tmp_path / "smollm2.int8.gguf", store=False)
    before, after = compare("smollm2", str(q.path), ppl_chunks=2, n_ctx=512, decode_tokens=0)
    print(f"\nsmollm2 PPL {before.ppl:.4f} ({before.quantization}) -> {after.ppl:.4f} ({after.quantization}); "
          f"weights {before.weight_bytes} -> {after.weight_bytes} bytes")
    assert (before.quantization, after.quantization) == ("Q4_1", "Q8_0")
    assert after.ppl == pytest.approx(before.ppl, rel=0.03)
    assert 1.3 < after.weight_bytes / before.weight_bytes < 1.6  # 8.5 vs ~5 bits a weight (embeddings were Q8_0)


def test_refuses_to_overwrite_its_source_or_write_nowhere(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "home"))
    with pytest.raises(HearthError, match="would replace the model being quantized"):
        quantize_model("smollm2", to="int8", name="smollm2")
    with pytest.raises(HearthError, match="nowhere to put"):
        quantize_model(str(tiny_gguf), to="int8", store=False)
