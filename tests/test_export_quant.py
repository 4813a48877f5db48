"""`hearth export-weights --format gguf` keeps the base's quantization (issue 24, item 11): smollm2 (Q4_1) plus a LoRA
adapter exported with the default (--quant auto) is a file of about the base's size, not float32's 540 MB, that hearth
and llama.cpp load, and whose logits are close to the unmerged adapter's. The weights the adapter changed are written
Q8_0, since re-quantized to Q4_1 a LoRA update mostly rounds back onto the base's grid: measured here too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hearth.cli.options import load_model
from hearth.tune.lora import LoraConfig

from lora_kit import make_adapter
from store_kit import run_main

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time, in a land far away, there lived a king who"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("exq") / "adapter", LoraConfig(r=8, alpha=16), seed=0, std=0.03)


@pytest.fixture(scope="module")
def reference(adapter):
    """Logits of the base (4-bit, as `hearth run` loads it) and of the base with the adapter unmerged."""
    base = load_model("smollm2", "cpu", "auto")
    ids = base.tokenizer.encode(PROMPT)
    adapted = load_model("smollm2", "cpu", "auto", adapter)
    return ids, _logits(base, ids), _logits(adapted, ids), base.checkpoint.path.stat().st_size


def _logits(lm, ids) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(torch.tensor([ids]))[0].float()


def _kept(exported, base, adapted) -> float:
    """How much of the adapter's effect on the logits the export holds (1: all, 0: none): the projection of
    export - base on adapted - base."""
    return float(((exported - base) * (adapted - base)).sum() / ((adapted - base) ** 2).sum())


def _export(capsys, adapter, out, *extra) -> str:
    rc, text, err = run_main(capsys, "export-weights", "smollm2", "--adapter", str(adapter), "--format", "gguf",
                             "-o", str(out), *extra)
    assert rc == 0, err
    return text


def test_default_export_keeps_the_base_quantization_and_the_adapter(adapter, reference, tmp_path, capsys):
    ids, base, adapted, base_size = reference
    out = tmp_path / "tuned.gguf"
    text = _export(capsys, adapter, out)
    size = out.stat().st_size
    assert size < 1.6 * base_size, (size, base_size)  # float32 was 5.5x the base
    assert "Q8_0" in text and "the base: Q4_1" in text and "MB" in text  # it says what it wrote, and its size
    exported = _logits(load_model(str(out), "cpu", "auto"), ids)
    effect = (adapted - base).abs().mean().item()
    assert (exported - adapted).abs().mean().item() < 0.5 * effect  # 4-bit base noise, well below the adapter's effect
    assert _kept(exported, base, adapted) > 0.8
    assert (exported.argmax(-1) == adapted.argmax(-1)).float().mean().item() >= 0.9

    import llama_cpp  # installed as the outside reference

    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, logits_all=True, n_threads=1, n_threads_batch=1, verbose=False)
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]))
    assert (theirs - exported).abs().mean().item() < 0.5 * effect  # llama.cpp runs the file as hearth does
    assert (theirs.argmax(-1) == exported.argmax(-1)).float().mean().item() >= 0.9


def test_quant_q4_1_gives_the_base_size_and_says_what_it_loses(adapter, reference, tmp_path, capsys):
    ids, base, adapted, base_size = reference
    out = tmp_path / "q4.gguf"
    text = _export(capsys, adapter, out, "--quant", "q4_1")
    assert abs(out.stat().st_size - base_size) < 0.01 * base_size and "Q4_1" in text
    exported = _logits(load_model(str(out), "cpu", "auto"), ids)
    # the measurement behind the default: on the base's own 4-bit grid most of the update rounds away
    assert _kept(exported, base, adapted) < 0.5
