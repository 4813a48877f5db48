"""Perplexity: llama-perplexity's protocol checked by hand on a tiny random model, and hearth's number checked
against llama.cpp's on the real default model's weights; the Austen corpus reader.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hearth.errors import HearthError
from hearth.eval import corpus
from hearth.eval.perplexity import perplexity, text_ids, text_perplexity
from hearth.model import Transformer

needs_austen = pytest.mark.skipif(not (corpus.PACKAGE_DIR / "data" / "Rdata.rdb").is_file(),
                                  reason=f"the Austen corpus is not installed: {corpus.INSTALL_HINT}")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- the protocol, by hand, on a tiny model


@pytest.fixture(scope="module")
def tiny_model(tiny_transformer) -> Transformer:
    return tiny_transformer(0, std=0.3, norm_std=0.2, vocab_size=64, dim=32, hidden_dim=64, max_seq_len=128)


def by_hand(model, ids, n_ctx, bos=None, max_chunks=None):
    """Every prediction computed on its own: chunk[j] from chunk[:j] alone (so nothing from other chunks can
    leak in). Returns (nll of the second-half predictions, nll of all predictions, running half-ppl per chunk)."""
    half, every, running = [], [], []
    n_chunks = len(ids) // n_ctx if max_chunks is None else min(max_chunks, len(ids) // n_ctx)
    for c in range(n_chunks):
        chunk = list(ids[c * n_ctx : (c + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        for j in range(1, n_ctx):
            with torch.inference_mode():
                logits = model(torch.tensor([chunk[:j]]))[0, -1].double()
            nll = float(-torch.log_softmax(logits, -1)[chunk[j]])
            every.append(nll)
            if j > n_ctx // 2:  # targets n_ctx/2+1 .. n_ctx-1: n_ctx/2 - 1 of them
                half.append(nll)
        running.append(math.exp(np.mean(half)))
    return np.array(half), np.array(every), running


def llama_estimate(nll: np.ndarray) -> tuple[float, float]:
    """llama-perplexity's 'Final estimate: PPL = x +/- e'."""
    ppl = math.exp(nll.mean())
    return ppl, ppl * math.sqrt(nll.var() / (len(nll) - 1))


def test_protocol_matches_hand_computation(tiny_model):
    n_ctx = 16
    ids = torch.randint(0, 64, (3 * n_ctx + 5,), generator=torch.Generator().manual_seed(1)).tolist()  # 5 left over
    r = perplexity(tiny_model, ids, n_ctx=n_ctx)
    half, every, running = by_hand(tiny_model, ids, n_ctx)
    assert (r.n_chunks, r.count, r.count_all) == (3, 3 * (n_ctx // 2 - 1), 3 * (n_ctx - 1))
    assert (len(half), len(every)) == (r.count, r.count_all)
    ppl, err = llama_estimate(half)
    ppl_all, err_all = llama_estimate(every)
    assert r.ppl == pytest.approx(ppl, rel=1e-5) and r.ppl_err == pytest.approx(err, rel=1e-4)
    assert r.ppl_all == pytest.approx(ppl_all, rel=1e-5) and r.ppl_all_err == pytest.approx(err_all, rel=1e-4)
    assert r.chunk_ppl == pytest.approx(running, rel=1e-5)


def test_chunks_are_independent_and_the_tail_is_dropped(tiny_model):
    n_ctx = 16
    ids = torch.randint(0, 64, (2 * n_ctx + 7,), generator=torch.Generator().manual_seed(2)).tolist()
    base = perplexity(tiny_model, ids, n_ctx=n_ctx)
    tail = ids[: 2 * n_ctx] + [(t + 1) % 64 for t in ids[2 * n_ctx :]]
    assert perplexity(tiny_model, tail, n_ctx=n_ctx).ppl == base.ppl  # the partial last chunk is never read
    first = perplexity(tiny_model, ids, n_ctx=n_ctx, max_chunks=1)
    alone = perplexity(tiny_model, ids[:n_ctx], n_ctx=n_ctx)
    assert first.n_chunks == 1 and first.ppl == pytest.approx(alone.ppl, rel=1e-6)
    # chunk 2 scored on its own equals chunk 2's share: no context carries over from chunk 1
    second = perplexity(tiny_model, ids[n_ctx : 2 * n_ctx], n_ctx=n_ctx)
    nll_both = math.log(base.ppl) * base.count
    assert nll_both == pytest.approx(math.log(first.ppl) * first.count + math.log(second.ppl) * second.count, rel=1e-6)


def test_bos_replaces_each_chunks_first_token(tiny_model):
    n_ctx, bos = 12, 7
    ids = torch.randint(8, 64, (2 * n_ctx,), generator=torch.Generator().manual_seed(3)).tolist()
    r = perplexity(tiny_model, ids, n_ctx=n_ctx, bos_id=bos)
    half, every, _ = by_hand(tiny_model, ids, n_ctx, bos=bos)
    assert r.count == len(half) == 2 * (n_ctx // 2 - 1)  # replaced, not prepended: chunks stay n_ctx long
    assert r.ppl == pytest.approx(llama_estimate(half)[0], rel=1e-5)
    assert r.ppl_all == pytest.approx(llama_estimate(every)[0], rel=1e-5)
    assert r.ppl != perplexity(tiny_model, ids, n_ctx=n_ctx).ppl


def test_text_ids_follow_the_models_bos_rule():
    enc = lambda text: [5, 6, 7]  # noqa: E731
    adds = SimpleNamespace(add_bos=True, bos_id=1, encode=lambda text: [1] + enc(text))
    plain = SimpleNamespace(add_bos=False, bos_id=1, encode=enc)
    assert text_ids(adds, "x") == ([1, 5, 6, 7], 1)
    assert text_ids(plain, "x") == ([5, 6, 7], None)


@pytest.mark.parametrize("kw, needle", [
    (dict(n_ctx=15), "even number"),
    (dict(n_ctx=2), "even number"),
    (dict(n_ctx=256), "exceeds the model's context"),
    (dict(n_ctx=16, max_chunks=0), "--max-chunks"),
    (dict(n_ctx=64), "fewer than one chunk"),
])
def test_bad_arguments_are_one_line_errors(tiny_model, kw, needle):
    with pytest.raises(HearthError, match=needle) as e:
        perplexity(tiny_model, list(range(40)), **kw)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the corpus


@needs_austen
def test_austen_novels_are_read_whole():
    books = corpus.austen_books()
    # line counts and characters as R reports them: length(emma), sum(nchar(emma)), ...
    expect = {"sensesensibility": (12624, 661064), "prideprejudice": (13030, 671738), "mansfieldpark": (15349, 867930),
              "emma": (16235, 866793), "northangerabbey": (7856, 425555), "persuasion": (8328, 458526)}
    assert {b: (len(v), sum(map(len, v))) for b, v in books.items()} == expect
    assert books["prideprejudice"][9] == "It is a truth universally acknowledged, that a single man in possession"
    assert "£" in corpus.austen_text()  # the one non-ASCII character, decoded as UTF-8
    assert corpus.austen_text("emma").startswith("EMMA\n\nBy Jane Austen")
    assert corpus.austen_text().startswith("SENSE AND SENSIBILITY")


def test_austen_missing_or_unknown_is_one_line(tmp_path):
    with pytest.raises(HearthError, match="apt-get install -y --no-install-recommends r-cran-janeaustenr"):
        corpus.austen_text(package_dir=tmp_path)
    with pytest.raises(HearthError, match="unknown Austen novel 'ulysses'"):
        corpus.austen_text("ulysses")


@needs_austen
def test_austen_corrupt_data_is_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    src = corpus.PACKAGE_DIR / "data"
    (data / "Rdata.rdx").write_bytes((src / "Rdata.rdx").read_bytes())
    (data / "Rdata.rdb").write_bytes((src / "Rdata.rdb").read_bytes()[:100_000])
    with pytest.raises(HearthError, match="cannot read the Austen novels") as e:
        corpus.austen_text(package_dir=tmp_path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- against llama.cpp on the real model's weights

N_CTX, N_CHUNKS = 256, 3


@pytest.fixture(scope="module")
def f32_smollm2(tmp_path_factory):
    """The default model's weights dequantized exactly (Q4_1 → F32) into a GGUF hearth and llama.cpp both read:
    neither side then quantizes activations, so their perplexities must agree to rounding."""
    from hearth.loader import resolve_model
    from hearth.weights import open_checkpoint
    from hearth.weights.gguf_writer import write_gguf

    ckpt = open_checkpoint(resolve_model("smollm2"))
    tied = ckpt.config.tie_embeddings
    state = {n: lazy() for n, lazy in ckpt.tensors.items() if not (tied and n == "output.weight")}
    path = tmp_path_factory.mktemp("ppl") / "smollm2.F32.gguf"
    return write_gguf(path, ckpt.config, state, ckpt.tokenizer, ckpt.tokenizer.chat_template, qtype="F32")


def llama_cpp_perplexity(path, ids, n_ctx, n_chunks):
    """The same protocol over llama.cpp's logits (as ../shared/bench/peers/perplexity.py computes it)."""
    import llama_cpp

    # fp32 KV cache (llama.cpp's default f16 cache alone moves logits by ~1e-2); one thread (see test_model_variants)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                          n_threads=1, n_threads_batch=1, type_k=0, type_v=0, verbose=False)
    half, every = [], []
    for c in range(n_chunks):
        chunk = ids[c * n_ctx : (c + 1) * n_ctx]
        llm.reset()
        llm.eval(chunk)
        lg = np.array(llm.scores[: n_ctx - 1], dtype=np.float64)
        m = lg.max(axis=1, keepdims=True)
        nll = m[:, 0] + np.log(np.exp(lg - m).sum(axis=1)) - lg[np.arange(n_ctx - 1), chunk[1:]]
        every.append(nll)
        half.append(nll[n_ctx // 2 :])
    return llm, np.concatenate(half), np.concatenate(every)


@pytest.mark.slow
@pytest.mark.reference
@needs_austen
def test_perplexity_agrees_with_llama_cpp(f32_smollm2):
    from hearth.loader import load

    text = corpus.austen_text("prideprejudice")[: 8 * N_CTX * N_CHUNKS]
    lm = load(str(f32_smollm2), dtype="float32")
    assert lm.checkpoint.quantization == "F32"
    ids, bos = text_ids(lm.tokenizer, text)
    assert bos is None and len(ids) >= N_CTX * N_CHUNKS  # SmolLM2: add_bos_token=false
    r = text_perplexity(lm, text, n_ctx=N_CTX, max_chunks=N_CHUNKS)
    llm, half, every = llama_cpp_perplexity(f32_smollm2, ids, N_CTX, N_CHUNKS)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids  # the same ids either way
    ppl, err = llama_estimate(half)
    ppl_all, err_all = llama_estimate(every)
    print(f"\nhearth PPL {r.ppl:.6f} +/- {r.ppl_err:.5f}, all {r.ppl_all:.6f}; "
          f"llama.cpp PPL {ppl:.6f} +/- {err:.5f}, all {ppl_all:.6f}")
    assert r.count == len(half) and r.count_all == len(every)
    assert r.ppl == pytest.approx(ppl, rel=1e-4)  # 0.01 %
    assert r.ppl_all == pytest.approx(ppl_all, rel=1e-4)
    assert r.ppl_err == pytest.approx(err, rel=1e-3)
    assert r.ppl_all_err == pytest.approx(err_all, rel=1e-3)
