"""Perplexity the way llama.cpp's `llama-perplexity` measures it, so the two numbers can be compared.

The protocol (llama.cpp tools/perplexity, `perplexity()`):

  * the whole text is tokenized once, with BOS in front only if the model adds one (SmolLM2's GGUF says
    add_bos_token=false, so no BOS);
  * the ids are cut into floor(n / n_ctx) non-overlapping chunks of n_ctx tokens (the tail is dropped),
    and each chunk is evaluated on its own, from an empty KV cache;
  * if the model adds BOS, each chunk's *first token is replaced* by BOS (not prepended: the chunk stays
    n_ctx long);
  * only the second half of each chunk is scored: logits at positions n_ctx/2 .. n_ctx-2 predicting
    tokens n_ctx/2+1 .. n_ctx-1, i.e. n_ctx/2 - 1 predictions per chunk, each with at least n_ctx/2
    tokens of context. This is the "PPL" llama-perplexity prints.

`ppl_all` also scores every prediction of each chunk (n_ctx - 1 of them). Both come with llama.cpp's
standard error: ppl * sqrt(var(nll) / (count - 1)), var taken over all scored tokens.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import torch

from hearth.errors import HearthError


@dataclass
class PerplexityResult:
    n_ctx: int
    n_chunks: int
    n_tokens: int  # ids in the text (BOS included if the model adds one)
    ppl: float  # second half of each chunk: what llama-perplexity prints
    ppl_err: float
    ppl_all: float  # every prediction of each chunk
    ppl_all_err: float
    count: int  # predictions behind `ppl`: n_chunks * (n_ctx/2 - 1)
    count_all: int
    seconds: float
    chunk_ppl: list[float] = field(default_factory=list)  # running `ppl` after each chunk, as llama.cpp's [1]x,[2]y,...

    @property
    def tokens_per_second(self) -> float:
        return self.n_chunks * self.n_ctx / self.seconds if self.seconds > 0 else float("inf")


def _estimate(nll_sum: float, nll2_sum: float, count: int) -> tuple[float, float]:
    """(ppl, its standard error) from the sum and sum of squares of NLLs, as llama.cpp computes them."""
    mean = nll_sum / count
    var = nll2_sum / count - mean * mean
    ppl = math.exp(mean)
    err = ppl * math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0
    return ppl, err


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Natural-log negative log-likelihood of targets[i] under logits[i], in float64: (n,)."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    return -lp.gather(1, targets[:, None].to(lp.device))[:, 0]


def chunk_starts(n_tokens: int, n_ctx: int, max_chunks: int | None = None) -> list[int]:
    n = n_tokens // n_ctx
    if max_chunks is not None:
        n = min(n, max_chunks)
    return [i * n_ctx for i in range(n)]


def check_args(n_ctx: int, max_chunks: int | None, context: int | None = None) -> None:
    if n_ctx < 4 or n_ctx % 2:
        raise HearthError(f"--ctx must be an even number of at least 4 tokens, not {n_ctx}")
    if context is not None and n_ctx > context:
        raise HearthError(f"--ctx {n_ctx} exceeds the model's context of {context} tokens; lower --ctx")
    if max_chunks is not None and max_chunks < 1:
        raise HearthError(f"--max-chunks must be at least 1, not {max_chunks}")


@torch.inference_mode()
def perplexity(
    model,
    ids: list[int],
    n_ctx: int = 512,
    bos_id: int | None = None,
    max_chunks: int | None = None,
    progress: bool = False,
) -> PerplexityResult:
    """llama-perplexity's score of `ids` (the whole text's token ids) under `model` (a hearth Transformer).

    `bos_id`: the model adds BOS (pass the tokenizer's bos_id, and ids that begin with it); each chunk's
    first token is then overwritten with it. `max_chunks`: score at most this many chunks (llama.cpp's
    --chunks).
    """
    check_args(n_ctx, max_chunks, model.config.max_seq_len)
    starts = chunk_starts(len(ids), n_ctx, max_chunks)
    if not starts:
        raise HearthError(f"the text has {len(ids)} tokens, fewer than one chunk of --ctx {n_ctx}; give more text or lower --ctx")
    device = _device(model)
    first = n_ctx // 2
    nll = nll2 = nll_all = nll2_all = 0.0
    count = count_all = 0
    running: list[float] = []
    t0 = time.perf_counter()
    with _bar(progress, len(starts)) as advance:
        for start in starts:
            chunk = torch.tensor(ids[start : start + n_ctx], dtype=torch.long)
            if bos_id is not None:
                chunk[0] = bos_id
            logits = model(chunk[None].to(device))[0]  # no cache: every chunk starts empty
            x = token_nll(logits[:-1], chunk[1:]).cpu()  # x[i]: position i predicting token i + 1
            half = x[first:]  # positions first .. n_ctx-2: n_ctx/2 - 1 predictions
            nll += float(half.sum())
            nll2 += float((half * half).sum())
            count += half.numel()
            nll_all += float(x.sum())
            nll2_all += float((x * x).sum())
            count_all += x.numel()
            running.append(math.exp(nll / count))
            advance(running[-1])
    seconds = time.perf_counter() - t0
    ppl, err = _estimate(nll, nll2, count)
    ppl_all, err_all = _estimate(nll_all, nll2_all, count_all)
    return PerplexityResult(n_ctx, len(starts), len(ids), ppl, err, ppl_all, err_all, count, count_all, seconds, running)


def _device(model) -> torch.device:
    """Where the model's tensors are (its modules may be swapped for quantized ones, so no attribute is assumed)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def text_ids(tokenizer, text: str) -> tuple[list[int], int | None]:
    """The ids llama-perplexity scores for `text` and the BOS id to put at each chunk's start (None: no BOS).

    One difference: llama-perplexity does not parse special-token text, hearth's tokenizer does, so a text
    that literally contains e.g. "<|im_start|>" gets one id here and several there (prose never does).
    """
    ids = tokenizer.encode(text)  # the model's own rule: BOS in front only if it adds one
    bos = tokenizer.bos_id if tokenizer.add_bos and tokenizer.bos_id is not None else None
    return ids, bos


def text_perplexity(loaded, text: str, n_ctx: int = 512, max_chunks: int | None = None, progress: bool = False) -> PerplexityResult:
    """Tokenize `text` with the model's tokenizer and score it (see `perplexity`). `loaded`: a LoadedModel."""
    ids, bos = text_ids(loaded.tokenizer, text)
    return perplexity(loaded.model, ids, n_ctx=n_ctx, bos_id=bos, max_chunks=max_chunks, progress=progress)


class _bar:
    """A rich progress bar over chunks on stderr, showing the running perplexity; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda ppl: None
        from hearth import progress

        self.bar = progress.bar("perplexity", ":bar", ":count", "chunks", "{task.fields[ppl]}", ":elapsed", ":left")
        self.bar.__enter__()
        tid = self.bar.add_task("ppl", total=self.total, ppl="")
        return lambda ppl: self.bar.update(tid, advance=1, ppl=f"PPL {ppl:.4f}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
