"""LoRA adapters as llama.cpp GGUF adapter files (hearth/weights/adapters/gguf.py, `hearth export-adapter`).

The judge is llama.cpp itself: it loads the file hearth writes onto the same Q4_1 model and its logits must equal
hearth's native path carrying the PEFT adapter (bit-identical where the base already is, as for TinyLlama-like
models); an adapter written without the q/k row permutation must not (so the comparison can fail).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import tiny
from hearth.engine.lora import ServedAdapters
from hearth.errors import HearthError
from hearth.loader import load
from hearth.weights.adapters import gguf as gguf_lora
from hearth.weights.adapters.peft import read_adapter
from hearth.weights.adapters.targets import LoraConfig
from hearth.weights.gguf_writer import write_gguf
from lora_kit import make_adapter
from store_kit import one_line_error, run_main


@pytest.fixture(scope="module", params=["tinyllama_gqa", "smollm_tied"])
def case(request, tmp_path_factory):
    """A tiny random Llama as a Q4_1 GGUF, a PEFT adapter for it (B random: it changes the output), and the adapter
    exported by `hearth export-adapter`."""
    root = tmp_path_factory.mktemp("gguf_lora")
    hf = tiny.save_hf_model(tiny.make_hf_model(request.param), root / "hf")
    ref = load(str(hf), dtype="float32")
    model = write_gguf(root / "m.gguf", ref.model.config, tiny.state_dict_of(ref.model), ref.tokenizer, qtype="Q4_1")
    peft = make_adapter(root / "adapter", LoraConfig(r=4, alpha=8), seed=0, std=0.1, model=str(hf))
    return root, model, peft, ref.model.config


def _export(capsys, model, peft, out) -> None:
    rc, stdout, err = run_main(capsys, "export-adapter", str(model), str(peft), "-o", str(out))
    assert rc == 0, err
    assert f"wrote {out} (LoRA r=4, alpha=8" in stdout


def test_round_trip_is_exact(case, capsys):
    root, model, peft, mc = case
    out = root / "rt.gguf"
    _export(capsys, model, peft, out)
    (c1, w1), (c2, w2) = read_adapter(peft, mc), read_adapter(out, mc)
    assert (c1.r, c1.alpha, set(c1.targets)) == (c2.r, c2.alpha, set(c2.targets)) and w1.keys() == w2.keys()
    assert all(torch.equal(w1[k][0], w2[k][0]) and torch.equal(w1[k][1], w2[k][1]) for k in w1)
    import gguf

    r = gguf.GGUFReader(str(out))
    assert r.fields["general.type"].contents() == "adapter" and r.fields["adapter.type"].contents() == "lora"
    assert r.fields["general.architecture"].contents() == "llama"
    names = {t.name for t in r.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names and len(names) == 2 * 7 * mc.n_layers


@pytest.mark.reference
def test_llama_cpp_applies_the_adapter_as_hearth_does(case, capsys, monkeypatch):
    import llama_cpp

    root, model, peft, mc = case
    out, wrong = root / "ll.gguf", root / "unpermuted.gguf"
    _export(capsys, model, peft, out)
    cfg, weights = read_adapter(peft, mc)
    monkeypatch.setattr(gguf_lora, "permute_rope", lambda b, heads: b)  # the control: q/k rows left as hearth's
    gguf_lora.write_lora_gguf(wrong, cfg, weights, mc)
    monkeypatch.undo()
    ids = list(tiny.corpus_ids(40))

    def theirs(lora=None) -> torch.Tensor:
        llm = llama_cpp.Llama(model_path=str(model), n_ctx=64, logits_all=True, n_threads=1, n_threads_batch=1,
                              verbose=False, type_k=0, type_v=0, **({"lora_path": str(lora)} if lora else {}))
        llm.eval(ids)
        return torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)

    def ours(adapter=None) -> torch.Tensor:
        lm = load(str(model))  # the native Q4_1 path, fused q|k|v and gate|up
        if adapter:
            ServedAdapters(lm.model, {"a": str(adapter)}).groups = [(1, None)]  # every row with the adapter
        return tiny.hearth_logits(lm.model, ids)

    base, tuned, unpermuted = theirs(), theirs(out), theirs(wrong)
    mine = ours(peft)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert (ours()[:16] - base[:16]).abs().max().item() < 1e-5  # the same arithmetic without an adapter
    assert rel(tuned, base) > 0.3  # the adapter matters
    # measured: 0.0 (TinyLlama-like: bit-identical) and 0.008 (SmolLM-like: one 8-bit rounding step crossed)
    assert rel(mine, tuned) < 0.02 and (mine.argmax(-1) == tuned.argmax(-1)).float().mean().item() > 0.9
    assert rel(mine, unpermuted) > 0.2  # measured 0.40-0.57: the permutation is what llama.cpp expects


def test_gguf_adapter_runs_in_hearth_like_the_peft_directory(case, capsys):
    root, model, peft, _ = case
    out = root / "run.gguf"
    _export(capsys, model, peft, out)
    runs = []
    for adapter in (peft, out):
        rc, stdout, err = run_main(capsys, "generate", str(model), "the", "--temperature", "0", "--max-tokens", "6",
                                   "--json", "--adapter", str(adapter))
        assert rc == 0, err
        runs.append(json.loads(stdout)["token_ids"])
    assert runs[0] == runs[1] and len(runs[0]) == 6


def test_bad_inputs_are_one_line_errors(case, capsys, tmp_path):
    root, model, peft, mc = case
    rc, _, err = run_main(capsys, "export-adapter", str(model), str(peft), "-o", str(tmp_path / "a.bin"))
    one_line_error(rc, err, "must end in .gguf")
    (tmp_path / "taken.gguf").write_text("keep")
    rc, _, err = run_main(capsys, "export-adapter", str(model), str(peft), "-o", str(tmp_path / "taken.gguf"))
    one_line_error(rc, err, "already exists")
    assert (tmp_path / "taken.gguf").read_text() == "keep"
    with pytest.raises(HearthError, match="is not a GGUF LoRA adapter"):
        read_adapter(model, mc)  # a model file, not an adapter
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(HearthError, match="is not a GGUF file"):
        read_adapter(tmp_path / "junk.gguf", mc)
    cfg, weights = read_adapter(peft, mc)
    gguf_lora.write_lora_gguf(tmp_path / "mine.gguf", cfg, weights, mc)
    # an adapter file is as untrusted as a model file: header counts are checked against its size before any
    # allocation (gguf.GGUFReader, read before, built its field lists first)
    good = (tmp_path / "mine.gguf").read_bytes()
    for offset, value, words in ((8, 900_000, "truncated or corrupt"), (16, 1 << 40, "implausible header")):
        bad = bytearray(good)
        bad[offset:offset + 8] = value.to_bytes(8, "little")
        (tmp_path / "bad.gguf").write_bytes(bytes(bad))
        with pytest.raises(HearthError, match=words):
            read_adapter(tmp_path / "bad.gguf", mc)
    for other in (dataclasses.replace(mc, hidden_dim=2 * mc.hidden_dim), dataclasses.replace(mc, n_layers=1)):
        with pytest.raises(HearthError, match="does not fit this model"):
            read_adapter(tmp_path / "mine.gguf", other)
