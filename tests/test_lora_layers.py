"""LoRA on some blocks only (LoraConfig.layers, PEFT's layers_to_transform): hearth wraps, writes and reads only those
blocks; Hugging Face peft loads such an adapter with the same logits as hearth (and hearth one made by peft); the
serving engine generates with it what the model carrying it does. A tiny random 3-block transformers model is the
base (tiny.py), so peft and transformers are the outside reference."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

import tiny
from hearth.engine.generate import Generator
from hearth.engine.llm_engine import EngineConfig, LLMEngine
from hearth.engine.request import EngineRequest
from hearth.engine.sampling import SamplingParams
from hearth.errors import HearthError
from hearth.loader import load
from hearth.tune.lora import LoRALinear, apply_lora, lora_modules, merge_lora
from hearth.tune.peft_io import load_adapter, save_adapter
from hearth.weights.adapters.peft import CONFIG, WEIGHTS, read_adapter
from hearth.weights.adapters.targets import LoraConfig

peft = pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")

N_LAYERS = 3
LAYERS = (0, 2)  # not contiguous: a list, not a range
TOL = 1e-4
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
_KEY_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _hf_model():
    from transformers import AutoModelForCausalLM

    cfg = tiny.hf_config("tinyllama_gqa")
    cfg.num_hidden_layers = N_LAYERS
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model.eval()


def _hf_copy(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.save_hf_model(_hf_model(), tmp_path_factory.mktemp("layers") / "base")


def _randomise(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_A.weight.copy_(torch.randn(m.lora_A.weight.shape, generator=g) * 0.1)
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def adapted(base, tmp_path_factory):
    """hearth + a random adapter on blocks 0 and 2 (all seven projections), saved in PEFT format."""
    lm = load(str(base), dtype="float32")
    cfg = LoraConfig(r=4, alpha=8, layers=LAYERS)
    wrapped = apply_lora(lm.model, cfg)
    _randomise(lm.model)
    adir = save_adapter(lm.model, cfg, tmp_path_factory.mktemp("adapter") / "a", base_model=str(base))
    return lm, adir, wrapped


def _copy_adapter(src, dst, **config):
    """src's adapter in dst with its adapter_config.json's entries replaced by `config`."""
    dst.mkdir()
    (dst / WEIGHTS).write_bytes((src / WEIGHTS).read_bytes())
    raw = json.loads((src / CONFIG).read_text())
    (dst / CONFIG).write_text(json.dumps({**raw, **config}))
    return dst


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- hearth: wrap, write, read


def test_apply_lora_wraps_only_the_listed_blocks(adapted):
    lm, _, wrapped = adapted
    assert {int(p.split(".")[1]) for p in wrapped} == set(LAYERS) and len(wrapped) == 7 * len(LAYERS)
    assert sorted(lora_modules(lm.model)) == sorted(wrapped)
    for i, block in enumerate(lm.model.layers):
        wrappers = [m for m in block.modules() if isinstance(m, LoRALinear)]
        assert len(wrappers) == (7 if i in LAYERS else 0), i
    assert LoraConfig(layers=(2, 0, 2)).layers == (0, 2)  # sorted, once each


def test_apply_lora_refuses_a_block_the_model_lacks(base):
    model = load(str(base), dtype="float32").model
    with pytest.raises(HearthError) as e:
        apply_lora(model, LoraConfig(layers=(1, N_LAYERS)))
    assert "lacks" in _one_line(e) and f"it has {N_LAYERS}" in str(e.value)
    assert not lora_modules(model)  # refused before wrapping anything
    for bad in ((), (-1,), (True,), ("1",)):
        with pytest.raises(HearthError, match="LoRA layers must be block indices"):
            LoraConfig(layers=bad)


def test_save_writes_layers_to_transform_and_only_those_tensors(adapted):
    lm, adir, _ = adapted
    raw = json.loads((adir / CONFIG).read_text())
    assert raw["layers_to_transform"] == list(LAYERS)
    tensors = load_file(str(adir / WEIGHTS))
    assert {int(_KEY_LAYER.search(k).group(1)) for k in tensors} == set(LAYERS)
    assert len(tensors) == 2 * 7 * len(LAYERS)

    cfg, weights = read_adapter(adir, lm.model.config)
    assert cfg.layers == LAYERS and (cfg.r, cfg.alpha) == (4, 8.0)
    assert {layer for layer, _ in weights} == set(LAYERS) and len(weights) == 7 * len(LAYERS)
    mods = lora_modules(lm.model)
    a, b = weights[(2, "k_proj")]
    assert torch.equal(a, mods["layers.2.attention.wk"].lora_A.weight) and torch.equal(b, mods["layers.2.attention.wk"].lora_B.weight)


def test_every_block_adapter_writes_null_layers(base, tmp_path):
    lm = load(str(base), dtype="float32")
    cfg = LoraConfig(r=2, alpha=4, targets=("q_proj",))
    apply_lora(lm.model, cfg)
    adir = save_adapter(lm.model, cfg, tmp_path / "all")
    assert json.loads((adir / CONFIG).read_text())["layers_to_transform"] is None
    got, weights = read_adapter(adir, lm.model.config)
    assert got.layers is None and {layer for layer, _ in weights} == set(range(N_LAYERS))


def test_layers_to_transform_as_one_int(adapted, base, tmp_path):
    lm, _, _ = adapted
    # an adapter on block 2 alone, its config saying so as PEFT also may: "layers_to_transform": 2
    model = load(str(base), dtype="float32").model
    cfg = LoraConfig(r=4, alpha=8, layers=(2,))
    apply_lora(model, cfg)
    one = save_adapter(model, cfg, tmp_path / "one")
    raw = json.loads((one / CONFIG).read_text())
    (one / CONFIG).write_text(json.dumps({**raw, "layers_to_transform": 2}))
    got, weights = read_adapter(one, lm.model.config)
    assert got.layers == (2,) and {layer for layer, _ in weights} == {2}


def test_tensor_of_a_layer_left_out_is_refused(adapted, tmp_path):
    lm, adir, _ = adapted
    narrowed = _copy_adapter(adir, tmp_path / "narrowed", layers_to_transform=[2])
    with pytest.raises(HearthError) as e:
        read_adapter(narrowed, lm.model.config)
    assert "layers.0." in _one_line(e) and "layers_to_transform leaves layer 0 out" in str(e.value)


@pytest.mark.parametrize("layers,needle", [
    ([0, 2, 5], "layers_to_transform names layer 5, the model has 3 layers"),
    ([], "layers_to_transform must be a list of block indices"),
    ([0, -2], "layers_to_transform must be a list of block indices"),
    ("0,2", "layers_to_transform must be a list of block indices"),
    ([0, True], "layers_to_transform must be a list of block indices"),
    ([0, 1.0], "layers_to_transform must be a list of block indices"),
])
def test_bad_layers_to_transform(adapted, tmp_path, layers, needle):
    lm, adir, _ = adapted
    bad = _copy_adapter(adir, tmp_path / "bad", layers_to_transform=layers)
    with pytest.raises(HearthError) as e:
        read_adapter(bad, lm.model.config)
    assert needle in _one_line(e)


def test_layers_named_but_a_listed_layer_has_no_tensors(adapted, tmp_path):
    lm, adir, _ = adapted
    wider = _copy_adapter(adir, tmp_path / "wider", layers_to_transform=[0, 1, 2])
    with pytest.raises(HearthError) as e:
        read_adapter(wider, lm.model.config)
    assert "lacks layers.1." in _one_line(e)


# ---------------------------------------------------------------- against Hugging Face peft


def test_peft_loads_the_layered_adapter_with_the_same_logits(base, adapted):
    lm, adir, _ = adapted
    ids = list(tiny.corpus_ids(48))
    ours = tiny.hearth_logits(lm.model, ids)
    plain = tiny.hf_logits(_hf_copy(base), ids)
    assert (ours - plain).abs().max() > 1e-2  # the adapter matters
    pm = peft.PeftModel.from_pretrained(_hf_copy(base), str(adir)).eval()
    wrapped = {int(_KEY_LAYER.search(n).group(1)) for n, _ in pm.named_parameters() if "lora_A" in n}
    assert wrapped == set(LAYERS)  # peft read layers_to_transform as hearth wrote it
    assert (tiny.hf_logits(pm, ids) - ours).abs().max() < TOL


def test_hearth_loads_a_layered_peft_adapter_with_the_same_logits(base, tmp_path):
    torch.manual_seed(3)
    cfg = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "o_proj", "up_proj"],
                          layers_to_transform=[1], init_lora_weights=False, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(_hf_copy(base), cfg).eval()
    pm.save_pretrained(tmp_path / "theirs")
    assert json.loads((tmp_path / "theirs" / CONFIG).read_text())["layers_to_transform"] == [1]
    lm = load(str(base), dtype="float32")
    load_adapter(lm.model, tmp_path / "theirs")
    assert sorted(lora_modules(lm.model)) == ["layers.1.attention.wo", "layers.1.attention.wq", "layers.1.feed_forward.w3"]
    ids = list(tiny.corpus_ids(48))
    assert (tiny.hearth_logits(lm.model, ids) - tiny.hf_logits(pm, ids)).abs().max() < TOL


# ---------------------------------------------------------------- served by the engine


@pytest.mark.parametrize("dtype", ["float32", "auto"], ids=["fp32", "fast-path"])
def test_engine_serves_the_layered_adapter_as_the_model_carrying_it(base, adapted, dtype):
    """fast-path: the fused projections (q|k|v, gate|up) carry the update in the adapter's columns."""
    _, adir, _ = adapted
    prompts = [list(tiny.corpus_ids(30)), list(tiny.corpus_ids(45))[15:]]

    ref = load(str(base), dtype="float32")
    base_tokens = [tiny.hearth_greedy(ref, p, GREEDY.max_tokens) for p in prompts]
    load_adapter(ref.model, adir)
    with_adapter = [Generator(ref.model, ref.tokenizer).complete(p, GREEDY).token_ids for p in prompts]
    assert with_adapter != base_tokens  # else an adapter ignored would pass
    merge_lora(ref.model)
    assert not lora_modules(ref.model)
    assert [Generator(ref.model, ref.tokenizer).complete(p, GREEDY).token_ids for p in prompts] == with_adapter

    lm = load(str(base), dtype=dtype)
    eng = LLMEngine(lm, EngineConfig(max_num_seqs=4, kv_cache_bytes=16 << 20, adapters={"a": str(adir)}))
    reqs = [EngineRequest(f"{name}-{i}", p, GREEDY, adapter=name or None)
            for i, p in enumerate(prompts) for name in ("", "a")]
    for r in reqs:
        eng.add_request(r)
    got = {r.request_id: [] for r in reqs}
    while eng.has_work():
        for o in eng.step():
            got[o.request_id] += o.new_token_ids
    for i in range(len(prompts)):
        assert got[f"a-{i}"] == with_adapter[i], i
        assert got[f"-{i}"] == base_tokens[i], i
