"""How good a guard is: its scores on the evaluation sets (eval_sources.py) against their labels, beside baselines.

Metrics, with "unsafe" the positive class:
- precision TP / (TP + FP), recall TP / (TP + FN), F1 their harmonic mean, false-positive rate FP / (FP + TN): at the
  policy's threshold (a text is flagged when its score is at or above it);
- AUPRC, the area under the precision-recall curve as average precision (sum over thresholds of the recall gained
  times the precision there, as scikit-learn's average_precision_score): threshold-free, what a guard's scores are
  worth for any threshold a deployment picks.
Each is None where it is undefined (precision with nothing flagged, recall with no unsafe item, FPR with no safe one,
AUPRC without both classes: a source of unsafe items only ranks perfectly whatever the scores).

Figures come overall (the sources counted in it: not bastion's prompt injections, which are outside S1-S14), per
source, per Llama Guard category (recall on the unsafe items of that category; FPR has no category, as safe items
have none) and per source label (the share flagged of each of a source's own categories).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from hearth.guard.eval_sources import BY_NAME, EvalItem, SourceLoad, normalize


@dataclass(frozen=True)
class Metrics:
    n: int
    unsafe: int  # positives among the n
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None
    fpr: float | None
    auprc: float | None


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def average_precision(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Average precision (scikit-learn's definition): sum_k (R_k - R_{k-1}) P_k over the distinct scores, highest
    first, all items at one score taken together. None when there is no positive."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return None
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of equal scores
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_curve(labels: Sequence[bool], scores: Sequence[float]) -> tuple[list[float], list[float]]:
    """(recall, precision) at each distinct score, highest first, starting from (0, 1) as scikit-learn plots it."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return [0.0], [1.0]
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last]
    return [0.0, *(tp / y.sum()).tolist()], [1.0, *(tp / (last + 1)).tolist()]


def metrics(labels: Sequence[bool], flagged: Sequence[bool], scores: Sequence[float]) -> Metrics:
    tp = sum(1 for y, f in zip(labels, flagged) if y and f)
    fp = sum(1 for y, f in zip(labels, flagged) if not y and f)
    fn = sum(1 for y, f in zip(labels, flagged) if y and not f)
    tn = len(labels) - tp - fp - fn
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = None if p is None or r is None else (2 * p * r / (p + r) if p + r else 0.0)
    # with no safe item every ranking is perfect (AP 1): say nothing rather than something empty
    auprc = average_precision(labels, scores) if fp + tn else None
    return Metrics(len(labels), tp + fn, tp, fp, fn, tn, p, r, f1, _ratio(fp, fp + tn), auprc)


@dataclass
class Scored:
    """One scorer's answers on the items, in their order."""

    name: str  # guard | base | keywords
    about: str  # what it is, for the report
    scores: list[float]
    flagged: list[bool]
    codes: list[tuple[str, ...]]  # categories it named for each item (empty when it flagged nothing)


def sample(loads: list[SourceLoad], limit: int | None, seed: int) -> list[EvalItem]:
    """Every source's items, or `limit` of each drawn at random (seeded), in the sources' order."""
    out: list[EvalItem] = []
    for src in loads:
        items = src.items
        if limit is not None and len(items) > limit:
            keep = sorted(random.Random(f"{seed}:{src.name}").sample(range(len(items)), limit))
            items = [items[i] for i in keep]
        out.extend(items)
    return out


def in_policy(items: list[EvalItem], codes: Sequence[str]) -> tuple[list[EvalItem], int]:
    """The items a policy is judged on: an unsafe item whose categories the policy does not check is left out (a
    deployment that allows S6 is not wrong to pass S6 text). Returns (kept, left out)."""
    allowed = set(codes)
    kept = [i for i in items if not (i.unsafe and i.categories and not set(i.categories) & allowed)]
    return kept, len(items) - len(kept)


def drop_training(loads: list[SourceLoad], train_texts: Sequence[str] | None) -> tuple[list[SourceLoad], list[EvalItem]]:
    """(the sources without the items whose text the guard trained on, those items), over the whole sets: a test item
    seen in training measures memory, not the guard. eval_sources.overlap counts the same thing."""
    if not train_texts:
        return loads, []
    train = {normalize(t) for t in train_texts if isinstance(t, str)}
    seen = [i for s in loads for i in s.items if normalize(i.text) in train]
    return [replace(s, items=[i for i in s.items if normalize(i.text) not in train]) for s in loads], seen


def summarize(items: list[EvalItem], scored: Scored) -> dict:
    """One scorer's figures: overall, per source, per category, per source label, and how often the categories it
    named include the item's own."""
    def m(idx: list[int]) -> dict:
        return asdict(metrics([items[i].unsafe for i in idx], [scored.flagged[i] for i in idx],
                              [scored.scores[i] for i in idx]))

    overall = [i for i, it in enumerate(items) if BY_NAME.get(it.source) is None or BY_NAME[it.source].in_overall]
    sources = sorted({it.source for it in items}, key=lambda s: list(BY_NAME).index(s) if s in BY_NAME else 99)
    per_category: dict[str, dict] = {}
    for i in overall:
        for code in items[i].categories if items[i].unsafe else ():
            c = per_category.setdefault(code, {"n": 0, "flagged": 0})
            c["n"] += 1
            c["flagged"] += scored.flagged[i]
    for c in per_category.values():
        c["recall"] = c["flagged"] / c["n"]
    per_label: dict[str, dict] = {}
    for i, it in enumerate(items):
        key = f"{it.source}:{it.label or '-'}:{'unsafe' if it.unsafe else 'safe'}"
        c = per_label.setdefault(key, {"n": 0, "flagged": 0})
        c["n"] += 1
        c["flagged"] += scored.flagged[i]
    named = [i for i in overall if items[i].unsafe and items[i].categories and scored.flagged[i] and scored.codes[i]]
    match = sum(1 for i in named if set(scored.codes[i]) & set(items[i].categories))
    return {"name": scored.name, "about": scored.about, "overall": m(overall),
            "sources": {s: m([i for i, it in enumerate(items) if it.source == s]) for s in sources},
            "categories": dict(sorted(per_category.items(), key=lambda kv: int(kv[0][1:]))),
            "labels": per_label,
            "category_match": {"named": len(named), "matched": match, "rate": _ratio(match, len(named))},
            "curve": dict(zip(("recall", "precision"), pr_curve([items[i].unsafe for i in overall],
                                                                 [scored.scores[i] for i in overall])))}


# -- scorers -------------------------------------------------------------------------------------------------------
def score_keywords(items: list[EvalItem], threshold: float) -> Scored:
    from hearth.guard.baselines import keyword_verdict

    verdicts = [keyword_verdict(i.text) for i in items]
    return Scored("keywords", "keyword/regex filter (hearth.guard.baselines.KEYWORDS), score 1 - 0.5**categories hit",
                  [v.score for v in verdicts], [v.score >= threshold for v in verdicts],
                  [v.categories if v.score >= threshold else () for v in verdicts])


def score_model(name: str, about: str, engine, fmt, items: list[EvalItem], adapter: str | None,
                on_done: Callable[[int], None] | None = None) -> Scored:
    """A guard model's verdicts on the items as user prompts (what the guard checks on input)."""
    from hearth.guard.classifier import classify

    verdicts = classify(engine, fmt, [([{"role": "user", "content": i.text}], "user") for i in items],
                        adapter=adapter, on_done=on_done)
    return Scored(name, about, [v.score for v in verdicts], [v.unsafe for v in verdicts],
                  [v.categories for v in verdicts])


# -- a whole evaluation --------------------------------------------------------------------------------------------
PUBLISHED = {
    "model": "Llama Guard 3 1B", "f1": 0.899, "fpr": 0.090,
    "data": "Meta's own internal test set, English (Llama Guard 3 1B model card); other data than these sets, so the "
            "figures give context and are not comparable item for item",
}


@dataclass(frozen=True)
class EvalOptions:
    limit: int | None = None  # items per source, drawn at random (seeded); None: all
    seed: int = 0
    baselines: bool = True  # score the keyword filter and the base model too
    device: str = "cpu"
    dtype: str = "auto"
    kernels: bool = True  # hearth's native CPU kernels (the CLI passes False under HEARTH_NO_KERNELS=1)


@dataclass
class EvalRun:
    guard: str  # GuardSource.describe()
    policy: str
    threshold: float
    loads: list[SourceLoad]
    items: list[EvalItem]
    scored: list[Scored]
    out_of_policy: int  # unsafe items of categories the policy does not check, left out
    in_training: list[EvalItem]  # items whose text the guard trained on, left out
    overlap_note: str  # how the overlap with the training texts was checked (or why not)
    overlap_checked: bool = True  # False: no training texts were given

    def report(self) -> dict:
        return {"guard": self.guard, "policy": self.policy, "threshold": self.threshold,
                "sources": {s.name: {**s.counts(), "in_overall": BY_NAME[s.name].in_overall,
                                     "about": BY_NAME[s.name].about} for s in self.loads},
                "evaluated": {"items": len(self.items), "unsafe": sum(i.unsafe for i in self.items),
                              "out_of_policy": self.out_of_policy},
                "overlap": {"eval_texts_in_training": len(self.in_training) if self.overlap_checked else None,
                            "note": self.overlap_note,
                            "examples": [i.text[:200] for i in self.in_training[:10]]},
                "scorers": [summarize(self.items, s) for s in self.scored], "published": PUBLISHED}


def run_evaluation(source, policy, opts: EvalOptions, loads: list[SourceLoad], train_texts: Sequence[str] | None,
                   overlap_note: str, progress: Callable[[str, int], Callable[[int], None]] | None = None) -> EvalRun:
    """Score the guard (`source`, a GuardSource) and, with opts.baselines, the keyword filter and its base model
    zero-shot on the items of `loads`. `train_texts`: what the guard trained on (items found among them are left
    out and counted); None: not known, the report says the overlap was not checked. `progress(label, total)` gives a
    callback advanced by items done."""
    from hearth.engine.llm_engine import EngineConfig, LLMEngine
    from hearth.guard.classifier import GuardFormat
    from hearth.guard.load import ADAPTER_NAME
    from hearth.loader import load

    kept, in_training = drop_training(loads, train_texts)
    items, out_of_policy = in_policy(sample(kept, opts.limit, opts.seed), policy.codes)
    if not items:
        from hearth.errors import HearthError

        raise HearthError("no evaluation items: every source is empty or missing (see the notes above)")
    lm = load(source.base, device=opts.device, dtype=opts.dtype, kernels=opts.kernels)
    adapters = {ADAPTER_NAME: str(source.adapter)} if source.adapter else {}
    engine = LLMEngine(lm, EngineConfig(adapters=adapters))
    fmt = GuardFormat(lm.tokenizer, lm.chat_template, policy, engine.max_model_len)

    def run(name: str, about: str, adapter: str | None) -> Scored:
        done = progress(name, len(items)) if progress else None
        return score_model(name, about, engine, fmt, items, adapter, on_done=done)

    scored = [run("guard", source.describe(), ADAPTER_NAME if source.adapter else None)]
    if opts.baselines:
        scored.append(score_keywords(items, policy.threshold))
        if source.adapter:  # a whole guard model (Llama Guard) has no base of its own here
            scored.append(run("base", f"{source.base} without the adapter, zero-shot in the same Llama Guard format",
                              None))
    return EvalRun(source.describe(), policy.name, policy.threshold, loads, items, scored, out_of_policy, in_training,
                   overlap_note, overlap_checked=train_texts is not None)
