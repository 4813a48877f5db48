"""hearth vs two outside references on the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF).

* transformers loads the same GGUF with `gguf_file=` and dequantizes it to fp32;
* llama.cpp runs an F32 GGUF made from the same file by llama.cpp's own quantize tool (an exact
  dequantization, so no activation quantization blurs the comparison).
hearth (fp32, reading the Q4_1 file) must be at least as close to transformers as llama.cpp is,
and all three must produce identical 64-token greedy continuations. Token ids come from llama.cpp's
tokenizer, which is faithful to SmolLM2's (see test_tokenizer_bpe.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hearth.engine.generate import Generator
from hearth.engine.sampling import SamplingParams
from hearth.loader import load, resolve_model

transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.slow, pytest.mark.reference]

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PROMPTS = [
    "Once upon a time, in a small village by the sea, there lived",
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "The GNU General Public License is a free, copyleft license for software and other kinds of works. In 2024, 17 of the 20",
]
N_GEN = 64


@pytest.fixture(scope="module")
def gguf_path():
    return resolve_model("smollm2")


@pytest.fixture(scope="module")
def f32_gguf(gguf_path, tmp_path_factory):
    import llama_cpp

    out = tmp_path_factory.mktemp("f32") / "smollm2.F32.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 0  # LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(gguf_path).encode(), str(out).encode(), params) == 0
    return out


@pytest.fixture(scope="module")
def llama(f32_gguf):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(f32_gguf), n_ctx=1024, n_batch=512, logits_all=True, n_threads=1, verbose=False)  # ggml threads spin badly on a busy 2-core box


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    return m.eval()


@pytest.fixture(scope="module")
def hearth_lm(smollm2_model_f32):
    return smollm2_model_f32


@pytest.fixture(scope="module")
def prompt_ids(llama):
    return [llama.tokenize(p.encode(), add_bos=False, special=True) for p in PROMPTS]


def llama_logits(llama, ids) -> np.ndarray:
    llama.reset()
    llama.eval(ids)
    return np.array(llama.scores[: len(ids)], dtype=np.float32)


def llama_greedy(llama, ids, n) -> list[int]:
    llama.reset()
    llama.eval(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llama.scores[llama.n_tokens - 1]))
        out.append(nxt)
        llama.eval([nxt])
    return out


def hf_greedy(model, ids, n) -> list[int]:
    """Plain argmax decoding with transformers' KV cache (generate()'s min_new_tokens would mask EOS)."""
    out_ids = []
    with torch.inference_mode():
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            nxt = int(out.logits[0, -1].argmax())
            out_ids.append(nxt)
            out = model(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return out_ids


@pytest.fixture(scope="module")
def hf_greedy_ref(hf_model, prompt_ids):
    """transformers' 64-token greedy continuation of each prompt, computed once for both tests below."""
    return [hf_greedy(hf_model, ids, N_GEN) for ids in prompt_ids]


def test_hearth_tokenizer_agrees_with_llama_cpp_on_prompts(hearth_lm, prompt_ids):
    for p, ids in zip(PROMPTS, prompt_ids):
        assert hearth_lm.tokenizer.encode(p) == ids


def test_logits_at_least_as_close_to_transformers_as_llama_cpp(hearth_lm, hf_model, llama, prompt_ids):
    for ids in prompt_ids:
        with torch.inference_mode():
            ref = hf_model(torch.tensor([ids])).logits[0].float().numpy()
            ours = hearth_lm.model(torch.tensor([ids]))[0].numpy()
        theirs = llama_logits(llama, ids)
        d_llama = float(np.abs(theirs - ref).max())
        d_hearth = float(np.abs(ours - ref).max())
        assert d_llama < 0.1, d_llama  # the two references agree with each other (measured: <= 0.052)
        assert d_hearth <= d_llama, (d_hearth, d_llama)
        assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_greedy_64_tokens_identical_to_both(hearth_lm, hf_greedy_ref, llama, prompt_ids):
    gen = Generator(hearth_lm.model, hearth_lm.tokenizer)
    params = SamplingParams(temperature=0, max_tokens=N_GEN, ignore_eos=True)
    for ids, ref in zip(prompt_ids, hf_greedy_ref):
        ours = gen.complete(ids, params).token_ids
        assert ours == ref
        assert ours == llama_greedy(llama, ids, N_GEN)


def test_hf_safetensors_directory_gives_identical_greedy_tokens(hearth_lm, hf_model, hf_greedy_ref, prompt_ids, tmp_path):
    """A HF directory written by transformers' save_pretrained from the same weights loads in hearth."""
    from transformers import LlamaForCausalLM

    # A GGUF-loaded transformers model refuses save_pretrained; copy its fp32 weights into a plain one.
    plain = LlamaForCausalLM(hf_model.config)
    plain.load_state_dict(hf_model.state_dict())
    plain.save_pretrained(tmp_path, safe_serialization=True)
    # Tokenizer files: hearth's faithful tokenizer (transformers' GGUF one lacks the digit split).
    hearth_lm.tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
        "chat_template": hearth_lm.chat_template.source,
    }))
    hf_dir = load(str(tmp_path), dtype="float32")
    assert hf_dir.checkpoint.format == "hf"
    assert hf_dir.chat_template.source == hearth_lm.chat_template.source
    params = SamplingParams(temperature=0, max_tokens=N_GEN, ignore_eos=True)
    for p, ids, ref in zip(PROMPTS, prompt_ids, hf_greedy_ref):
        assert hf_dir.tokenizer.encode(p) == ids
        assert Generator(hf_dir.model, hf_dir.tokenizer).complete(ids, params).token_ids == ref


def test_chat_prompt_identical_to_transformers_apply_chat_template(hearth_lm, gguf_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    for messages in (
        [{"role": "user", "content": "Hi there!"}],
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "Why? ½ of 8 is 4 — ✓ 😊"}],
    ):
        for gen_prompt in (True, False):
            ref = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt)
            assert hearth_lm.chat_template.render(messages, add_generation_prompt=gen_prompt) == ref



def test_embeddings_equal_transformers_mean_pooled_hidden_states(hearth_lm, hf_model):
    """/v1/embeddings' vector: the final-norm hidden states of transformers' model, averaged and normalized; a
    prompt longer than a prefill chunk goes through in chunks and still agrees."""
    tok = hearth_lm.tokenizer
    text = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()[:3000]
    hearth_lm.model.prefill_chunk = 256  # several chunks for this text
    try:
        for ids in (tok.encode("The capital of France is Paris."), tok.encode(text)):
            ours = hearth_lm.model.embed(ids)
            with torch.no_grad():
                hidden = hf_model.model(torch.tensor([ids])).last_hidden_state[0]
            ref = torch.nn.functional.normalize(hidden.mean(0), dim=0)
            assert torch.dot(ours, ref) > 0.99999 and (ours - ref).abs().max() < 1e-4, len(ids)
    finally:
        hearth_lm.model.prefill_chunk = 512


def test_eval_logliks_equal_transformers(hearth_lm, hf_model):
    """`hearth eval`'s scores of HellaSwag and WinoGrande items (OLMES pairs; shared-context batching, and WinoGrande's
    per-choice contexts one at a time) equal transformers' summed log-probabilities of the same tokens."""
    from hearth.eval.loglik import score
    from hearth.eval.tasks import load_task

    items = load_task("hellaswag", limit=3) + load_task("winogrande", limit=2)
    res = score(items, hearth_lm)
    for it in res.items:
        for r, ll in zip(it.requests, it.logliks):
            with torch.no_grad():
                logits = hf_model(torch.tensor([r.tokens])).logits[0].float()
            lp = torch.log_softmax(logits[r.ctxlen - 1 : len(r.tokens) - 1], -1)
            ref = float(lp.gather(1, torch.tensor(r.continuation)[:, None]).double().sum())
            assert ll == pytest.approx(ref, abs=2e-3), it.id
