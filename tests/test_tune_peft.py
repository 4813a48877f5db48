"""hearth's LoRA adapters against Hugging Face peft, and fine-tuned exports against transformers and llama.cpp.

A tiny random-weight transformers model is saved as a HF directory and loaded by hearth; an adapter made
by hearth must give, through peft on the transformers model, the same logits as hearth with the adapter
(and the reverse for an adapter made by peft). The adapted model exported as a HF directory and as a
GGUF file must give the same greedy tokens in transformers and llama.cpp as in hearth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny
from hearth.errors import HearthError
from hearth.loader import load
from hearth.tune.export import write_model
from hearth.tune.lora import LoraConfig, apply_lora, lora_modules
from hearth.tune.peft_io import load_adapter, save_adapter

peft = pytest.importorskip("peft")

TOL = 1e-4
VARIANT = "tinyllama_gqa"  # GQA, untied output, 2 layers, dim 256


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    hf = tiny.make_hf_model(VARIANT)
    return hf, tiny.save_hf_model(hf, root / VARIANT), root


def _random_adapter(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_A.weight.normal_(0, 0.1)
            m.lora_B.weight.normal_(0, 0.1)


def _hf_copy(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapted(base):
    """hearth + a random (non-trivial) adapter on all seven projections, saved in PEFT format."""
    _, directory, root = base
    lm = load(str(directory), dtype="float32")
    cfg = LoraConfig(r=4, alpha=8)
    apply_lora(lm.model, cfg)
    _random_adapter(lm.model)
    save_adapter(lm.model, cfg, root / "adapter", base_model=str(directory))
    return lm, root / "adapter"


def test_peft_loads_hearth_adapter_with_the_same_logits(base, adapted):
    _, directory, _ = base
    lm, adir = adapted
    ids = list(tiny.corpus_ids(64))
    ours = tiny.hearth_logits(lm.model, ids)
    plain = tiny.hf_logits(_hf_copy(directory), ids)
    assert (ours - plain).abs().max() > 1e-2  # the adapter matters
    peft_model = peft.PeftModel.from_pretrained(_hf_copy(directory), str(adir)).eval()
    theirs = tiny.hf_logits(peft_model, ids)
    assert (ours - theirs).abs().max() < TOL


def test_hearth_loads_peft_adapter_with_the_same_logits(base, tmp_path):
    _, directory, _ = base
    torch.manual_seed(3)
    cfg = peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
                          init_lora_weights=False, task_type="CAUSAL_LM")  # random B: a non-trivial adapter
    pm = peft.get_peft_model(_hf_copy(directory), cfg).eval()
    pm.save_pretrained(tmp_path / "theirs")
    lm = load(str(directory), dtype="float32")
    load_adapter(lm.model, tmp_path / "theirs")
    assert len(lora_modules(lm.model)) == 2 * 4
    ids = list(tiny.corpus_ids(64))
    assert (tiny.hearth_logits(lm.model, ids) - tiny.hf_logits(pm, ids)).abs().max() < TOL


def test_incompatible_adapters_are_refused_in_one_line(base, adapted, tmp_path):
    _, _, root = base
    _, adir = adapted
    other = tiny.save_hf_model(tiny.make_hf_model("llama2_mha"), root / "other")  # dim 128, not 256
    with pytest.raises(HearthError, match=r"does not fit this model: layers.0.down_proj.lora_A has shape \(4, 512\), the model needs \(4, 352\) \(made for "):
        load_adapter(load(str(other), dtype="float32").model, adir)
    with pytest.raises(HearthError, match="adapter_config.json is missing"):
        load_adapter(load(str(other), dtype="float32").model, tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    with pytest.raises(HearthError, match="only LoRA adapters are supported"):
        load_adapter(load(str(other), dtype="float32").model, tmp_path)


def _llama_cpp_greedy(path, prompt, n):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, n_threads=1, n_threads_batch=1, verbose=False,
                          type_k=0, type_v=0)
    llm.eval(prompt)
    new = []
    for _ in range(n):
        new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([new[-1]])
    return new


@pytest.mark.reference
def test_exported_adapted_model_gives_the_same_greedy_tokens(adapted, tmp_path):
    lm, _ = adapted
    prompt = list(tiny.corpus_ids(40))
    ours = tiny.hearth_greedy(lm, prompt, 16)
    hf_dir = write_model(lm, "safetensors", tmp_path / "hf")
    assert tiny.hf_greedy(_hf_copy(hf_dir), prompt, 16) == ours
    assert tiny.hearth_greedy(load(str(hf_dir), dtype="float32"), prompt, 16) == ours
    gguf = write_model(lm, "gguf", tmp_path / "model.gguf")
    assert _llama_cpp_greedy(gguf, prompt, 16) == ours
    with pytest.raises(HearthError, match="already exists; --force replaces it"):
        write_model(lm, "safetensors", tmp_path / "hf")
