"""Helpers (not tests): tiny random-weight Llama-family models saved with transformers, and a tiny
byte-level BPE tokenizer trained on the GPL text, so hearth can be checked against transformers and
llama.cpp without downloading anything.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

CORPUS = Path("/usr/share/common-licenses/GPL-3")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENIZER_VOCAB = 384
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# name -> (config class, config kwargs). Dims are multiples of 32 (Q4_0 ... Q8_0 blocks) and the
# "gqa" model's rows are multiples of 256 (K-quant super-blocks).
VARIANTS: dict[str, tuple[str, dict]] = {
    # Llama 2: multi-head attention, untied output; embedding padded beyond the tokenizer's vocabulary
    "llama2_mha": ("llama", dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=4, vocab_size=416, rms_norm_eps=1e-5,
                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                 max_position_embeddings=1024, tie_word_embeddings=False)),
    # TinyLlama: grouped-query attention (4 query heads per kv head pair), untied
    "tinyllama_gqa": ("llama", dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=TOKENIZER_VOCAB, rms_norm_eps=1e-5,
                                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                    max_position_embeddings=2048, tie_word_embeddings=False)),
    # SmolLM: tied embeddings, 3 query heads per kv head
    "smollm_tied": ("llama", dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=3,
                                  num_key_value_heads=1, vocab_size=TOKENIZER_VOCAB, rms_norm_eps=1e-5,
                                  rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                                  max_position_embeddings=2048, tie_word_embeddings=True)),
    # Llama 3.2: llama3 rope scaling (factor 32 from 8192), theta 500000, tied
    "llama32_scaled": ("llama", dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=TOKENIZER_VOCAB, rms_norm_eps=1e-5,
                                     rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 8192},
                                     max_position_embeddings=131072, tie_word_embeddings=True)),
    # Mistral: model_type "mistral", sliding window larger than the test's sequences, theta 1e6
    "mistral": ("mistral", dict(hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=1, vocab_size=TOKENIZER_VOCAB, rms_norm_eps=1e-5,
                                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                sliding_window=4096, max_position_embeddings=4096, tie_word_embeddings=False)),
    # head_dim (48) != hidden / heads (32)
    "head_dim": ("llama", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=48, vocab_size=TOKENIZER_VOCAB, rms_norm_eps=1e-5,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                               max_position_embeddings=2048, tie_word_embeddings=False)),
}

# Large enough that logits are peaked (greedy choices are not decided by rounding noise).
INIT_STD = 0.08


@functools.lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train([str(CORPUS)], trainer)
    assert tk.get_vocab_size() == TOKENIZER_VOCAB
    return tk.to_str()


def train_tokenizer():
    """A fresh `tokenizers.Tokenizer`: byte-level BPE, 384 tokens, ids 0-2 are SPECIAL."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_tokenizer_json())


def save_tokenizer(directory: Path) -> None:
    train_tokenizer().save(str(directory / "tokenizer.json"))
    tc = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tc))


def hf_config(variant: str):
    from transformers import LlamaConfig, MistralConfig

    kind, kw = VARIANTS[variant]
    cls = MistralConfig if kind == "mistral" else LlamaConfig
    return cls(**kw, initializer_range=INIT_STD, bos_token_id=0, eos_token_id=2, pad_token_id=0)


def make_hf_model(variant: str, seed: int = 0):
    """A random-weight transformers model (fp32, eval). Norm weights are random too, so a swapped norm shows."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(variant), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model.eval()


def save_hf_model(model, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    save_tokenizer(directory)
    return directory


@functools.lru_cache(maxsize=None)
def corpus_ids(n: int) -> tuple[int, ...]:
    """The first `n` tokens of the GPL text."""
    ids = train_tokenizer().encode(CORPUS.read_text()[: 20 * n]).ids[:n]
    assert len(ids) == n
    return tuple(ids)


@torch.inference_mode()
def hf_logits(model, ids) -> torch.Tensor:
    """transformers' logits (T, vocab), fp32."""
    return model(torch.tensor([list(ids)])).logits[0].float()


@torch.inference_mode()
def hearth_logits(model, ids) -> torch.Tensor:
    return model(torch.tensor([list(ids)]))[0].float()


@torch.inference_mode()
def hf_greedy(model, ids, n: int) -> list[int]:
    out = model.generate(
        torch.tensor([list(ids)]), max_new_tokens=n, do_sample=False, min_new_tokens=n, pad_token_id=0,
        eos_token_id=None,
    )
    return out[0, len(ids):].tolist()


def hearth_greedy(loaded, ids, n: int) -> list[int]:
    from hearth.engine.generate import Generator
    from hearth.engine.sampling import SamplingParams

    done = Generator(loaded.model, loaded.tokenizer).complete(
        list(ids), SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    )
    return done.token_ids


# hearth's own random tiny Transformer (no transformers model behind it): small enough for a test, shaped as a Llama
TINY_CONFIG = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=256)


def random_transformer(seed: int = 0, std: float = 0.08, norm_std: float | None = None, **config):
    """A hearth Transformer (TINY_CONFIG with `config` overrides) with random weights, in eval mode.

    Every parameter is drawn from N(0, std); with `norm_std`, the 1-D ones (the RMSNorm weights) are 1 + N(0, norm_std)
    instead, as trained norms sit near 1. The same seed and arguments give the same weights, bit for bit."""
    from hearth.config import ModelConfig
    from hearth.model import Transformer

    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**TINY_CONFIG, **config}))
    with torch.no_grad():
        for p in model.parameters():
            if norm_std is not None and p.dim() == 1:
                p.copy_(1 + norm_std * torch.randn_like(p))
            else:
                p.normal_(0, std)
    return model.eval()


def state_dict_of(model) -> dict[str, torch.Tensor]:
    """hearth-named tensors of a hearth Transformer (output.weight dropped when tied)."""
    sd = dict(model.state_dict())
    if model.config.tie_embeddings:
        sd.pop("output.weight", None)
    return sd


@functools.lru_cache(maxsize=None)
def _spm_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    # Learn the merges on "▁"-prefixed words, then lay the vocabulary out as Llama 2's tokenizer.json
    # does: <unk> <s> </s>, the 256 byte-fallback pieces <0x00>..<0xFF>, then the learned pieces.
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tk.train([str(CORPUS)], trainers.BpeTrainer(vocab_size=384, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    learned = json.loads(tk.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in learned["merges"]]
    spm = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    spm.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    spm.add_special_tokens(["<unk>", "<s>", "</s>"])
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return spm.to_str()


def train_spm_tokenizer():
    """A SentencePiece-style (Llama 2 layout) BPE tokenizer with byte fallback; <unk>=0, <s>=1, </s>=2."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_spm_tokenizer_json())
