"""Multiple-choice scoring in process, with hearth's own model, the way lm-eval's `local-completions` scores it.

lm-eval (TemplateLM._encode_pair, causal models, add_bos_token=False) turns (context, continuation) into
token ids like this, and `encode_pair` repeats it step for step:

  * trailing whitespace of the context moves to the front of the continuation;
  * whole = encode(context + continuation), ctx = encode(context), no special tokens either time;
  * the ids sent are ctx + whole[len(ctx):], left-truncated to max_length - 1 (2047 by default), and
    the context length is reduced by what was cut;
  * an empty context becomes the prefix token (BOS, else EOS).

It then sends those ids with echo=true, max_tokens=1, logprobs=1 and sums
`token_logprobs[ctxlen:-1]`: the log-probabilities of the continuation tokens, each given everything
before it. `score` computes the same sums running each context once (contexts of several items batched,
kept in a KV cache) plus one batched pass over each item's continuation tokens; `mode="full"` instead
runs one forward over the whole sequence per choice, which is what a server does for each request.

Accuracy is the mean of argmax(loglikelihoods) == gold, first maximum winning (numpy's argmax), and
acc_norm divides each loglikelihood by the choice's length in characters, as lm-eval does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from hearth.eval.arc import prompt

TARGET_DELIMITER = " "
MAX_LENGTH = 2048  # lm-eval's TemplateAPI default; it keeps one position for the generated token


@dataclass
class Request:
    """One (context, continuation) pair as lm-eval would send it."""

    tokens: list[int]  # context + continuation ids, exactly the prompt lm-eval sends
    ctxlen: int  # how many of them are context

    @property
    def continuation(self) -> list[int]:
        return self.tokens[self.ctxlen :]


@dataclass
class ItemScore:
    id: str
    gold: int
    choices: list[str]
    logliks: list[float]
    greedy: list[bool]
    requests: list[Request] = field(default_factory=list, repr=False)

    @property
    def pred(self) -> int:
        return _argmax(self.logliks)

    @property
    def pred_norm(self) -> int:
        return _argmax([ll / float(len(c)) for ll, c in zip(self.logliks, self.choices)])

    @property
    def correct(self) -> bool:
        return self.pred == self.gold


@dataclass
class Result:
    items: list[ItemScore]
    seconds: float

    @property
    def acc(self) -> float:
        return sum(it.pred == it.gold for it in self.items) / len(self.items)

    @property
    def acc_norm(self) -> float:
        return sum(it.pred_norm == it.gold for it in self.items) / len(self.items)

    @property
    def acc_stderr(self) -> float:
        """The standard error of `acc` (a mean of 0/1 outcomes, sample variance), as lm-eval reports it; nan for one
        item."""
        n = len(self.items)
        return math.sqrt(self.acc * (1 - self.acc) / (n - 1)) if n > 1 else float("nan")


def _argmax(xs: list[float]) -> int:
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def prefix_token_id(tokenizer) -> int:
    if tokenizer.bos_id is not None:
        return tokenizer.bos_id
    return tokenizer.eos_ids[0]


def encode_pair(tokenizer, context: str, continuation: str, max_length: int = MAX_LENGTH) -> Request:
    """The token ids and context length lm-eval's local-completions sends for this pair."""
    enc = lambda s: tokenizer.encode(s, add_bos=False)  # noqa: E731  (lm-eval: add_special_tokens=False)
    if context == "":
        cont = enc(continuation)
        pre = prefix_token_id(tokenizer)
        ctx, cont = ([pre], cont) if pre != cont[0] else (cont[:1], cont[1:])
    else:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = enc(context + continuation)
        ctx = enc(context)
        cont = whole[len(ctx) :]
    keep = max_length - 1
    tokens = (ctx + cont)[-keep:]
    ctxlen = len(ctx) - max(0, len(ctx) + len(cont) - keep)
    return Request(tokens, ctxlen)


def item_requests(tokenizer, item: dict[str, Any], max_length: int = MAX_LENGTH) -> list[Request]:
    """An item's requests: its own (context, continuation) pairs (hearth/eval/tasks.py), or ARC's prompt."""
    if "pairs" in item:
        return [encode_pair(tokenizer, c, x, max_length) for c, x in item["pairs"]]
    context = prompt(item)
    return [encode_pair(tokenizer, context, TARGET_DELIMITER + c, max_length) for c in item["choices"]]


def _sum_logprobs(logits: torch.Tensor, targets: list[int]) -> tuple[float, bool]:
    """logits (n, vocab): row i predicts targets[i]. Sum of log-probabilities, and whether each was the argmax."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    tgt = torch.tensor(targets, dtype=torch.long, device=lp.device)
    picked = lp.gather(1, tgt[:, None])[:, 0]
    greedy = bool((picked >= lp.max(dim=-1).values).all())
    return float(picked.double().sum()), greedy


def _score_full(model, reqs: list[Request], device) -> list[tuple[float, bool]]:
    """One forward per request over all its tokens (right-padded into one batch: causal, so padding is inert)."""
    longest = max(len(r.tokens) for r in reqs)
    batch = torch.zeros((len(reqs), longest), dtype=torch.long)
    for i, r in enumerate(reqs):
        batch[i, : len(r.tokens)] = torch.tensor(r.tokens)
    logits = model(batch.to(device))
    out = []
    for i, r in enumerate(reqs):
        # position p predicts token p + 1: the continuation tokens are predicted by rows ctxlen-1 .. len-2
        out.append(_sum_logprobs(logits[i, r.ctxlen - 1 : len(r.tokens) - 1], r.continuation))
    return out


def _shares_context(reqs: list[Request]) -> bool:
    ctxlen = reqs[0].ctxlen
    return ctxlen >= 2 and all(r.ctxlen == ctxlen and r.tokens[:ctxlen] == reqs[0].tokens[:ctxlen] for r in reqs)


def _score_shared(model, groups: list[list[Request]], device) -> list[list[tuple[float, bool]]]:
    """Several items at once: their contexts in one batched pass, then each item's choices in another.

    1. The contexts less their last token, right-padded into one batch, fill a KV cache (causal: the
       padding after a row's tokens never reaches its real positions). No logits are needed here.
    2. Per item, its row of that cache is copied into a cache with one row per choice, and each choice
       runs [last context token] + continuation[:-1] from there, right-padded: row j's logits predict
       continuation token j. Every needed logit is computed once, and the context only once per item.
    """
    lens = [g[0].ctxlen - 1 for g in groups]
    big = model.new_cache(batch_size=len(groups), max_seq_len=max(lens))
    batch = torch.zeros((len(groups), max(lens)), dtype=torch.long)
    for i, g in enumerate(groups):
        batch[i, : lens[i]] = torch.tensor(g[0].tokens[: lens[i]])
    model(batch.to(device), 0, big, last_only=True)
    out = []
    for i, reqs in enumerate(groups):
        n = lens[i]
        rows = [[r.tokens[n]] + r.continuation[:-1] for r in reqs]
        longest = max(len(x) for x in rows)
        cache = model.new_cache(batch_size=len(reqs), max_seq_len=n + longest)
        cache.k[:, :, :, :n] = big.k[:, i : i + 1, :, :n]  # (layers, batch, kv heads, positions, head dim)
        cache.v[:, :, :, :n] = big.v[:, i : i + 1, :, :n]
        cont_batch = torch.zeros((len(reqs), longest), dtype=torch.long)
        for j, x in enumerate(rows):
            cont_batch[j, : len(x)] = torch.tensor(x)
        logits = model(cont_batch.to(device), n, cache)
        out.append([_sum_logprobs(logits[j, : len(r.continuation)], r.continuation) for j, r in enumerate(reqs)])
    return out


def score(
    items: Iterable[dict[str, Any]],
    loaded=None,
    mode: str = "shared",
    max_length: int = MAX_LENGTH,
    group: int = 8,
    progress: bool = False,
    on_progress=None,
) -> Result:
    """Score ARC-style items ({"id", "question", "choices", "answer"}, or {"id", "pairs", "choices", "answer"}) with a
    hearth model (default smollm2). `on_progress(done, total)` is called as items are scored.

    mode "shared" (default): contexts of `group` items of similar length batched, each context run once;
    "full": one forward per (item, choice) over its whole token sequence.
    """
    if loaded is None:
        from hearth.loader import load

        loaded = load("smollm2")
    if mode not in ("shared", "full"):
        raise ValueError(f"mode must be 'shared' or 'full', not {mode!r}")
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    t0 = time.perf_counter()
    items = list(items)
    reqs = [item_requests(tok, it, max_length) for it in items]
    for it, rs in zip(items, reqs):
        if any(r.ctxlen < 1 or not r.continuation for r in rs):
            raise ValueError(f"item {it.get('id')}: a choice has no context or no continuation tokens")
    pairs: list[list[tuple[float, bool]] | None] = [None] * len(items)
    with torch.inference_mode():
        if mode == "full":
            todo = list(range(len(items)))
        else:
            # similar context lengths together, so little of each batch is padding
            shared = sorted((i for i, rs in enumerate(reqs) if _shares_context(rs)), key=lambda i: reqs[i][0].ctxlen)
            todo = sorted(set(range(len(items))) - set(shared))
            for k in range(0, len(shared), group):
                idx = shared[k : k + group]
                for i, p in zip(idx, _score_shared(model, [reqs[i] for i in idx], device)):
                    pairs[i] = p
                if on_progress is not None:
                    on_progress(k + len(idx), len(items))
                if progress:
                    print(f"{k + len(idx)}/{len(items)} items, {time.perf_counter() - t0:.1f}s", flush=True)
        done = sum(p is not None for p in pairs)
        for i in todo:
            pairs[i] = _score_full(model, reqs[i], device)
            done += 1
            if on_progress is not None:
                on_progress(done, len(items))
            if progress and (i + 1) % 25 == 0:
                print(f"{i + 1}/{len(items)} items, {time.perf_counter() - t0:.1f}s", flush=True)
    scored = [
        ItemScore(
            id=str(it.get("id", n)),
            gold=int(it["answer"]),
            choices=list(it["choices"]),
            logliks=[p[0] for p in ps],
            greedy=[p[1] for p in ps],
            requests=rs,
        )
        for n, (it, rs, ps) in enumerate(zip(items, reqs, pairs))
    ]
    return Result(scored, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from hearth.eval.arc import load_items
    from hearth.loader import load

    ap = argparse.ArgumentParser(description="ARC-Easy (test) accuracy of a hearth model, scored in process")
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--mode", choices=("shared", "full"), default="shared")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    a = ap.parse_args(argv)
    loaded = load(a.model, device=a.device, dtype=a.dtype)
    items = load_items(limit=a.limit)
    res = score(items, loaded, mode=a.mode, progress=True)
    n = len(res.items)
    print(f"{n} items  acc {res.acc:.4f}  acc_norm {res.acc_norm:.4f}  "
          f"({res.seconds:.1f}s, {res.seconds / n * 1000:.0f} ms/item)")
    assert all(math.isfinite(ll) for it in res.items for ll in it.logliks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
