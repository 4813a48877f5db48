"""A red-team run: the suites' probes answered by the model (batched on hearth's engine, cached), each response
judged twice (harm: the guard's response classification; refusal: the detector), and the same probes scored with the
guard in front (its input check on the prompt, its output check on the response), as `hearth serve --guard` runs it.

The guarded configuration needs no second generation: the server generates exactly what the unguarded model would
(the same engine, the same sampling) and the guard only decides what reaches the client. A prompt the input check
blocks gets the policy's refusal; a response the output check blocks is replaced by it.

The harm judge always reads with the guard's default policy (all of S1-S14 at its threshold), whatever the filter's
policy, so that the two configurations are judged alike. It is the guard itself: in the guarded configuration its
output check removes what it would judge harmful, so that configuration's attack success counts what its policy lets
through (flag/allow) and is no independent evidence of the filter; the report says so.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hearth.errors import HearthError
from hearth.redteam.cache import ResultCache, file_digest, make_key
from hearth.redteam.metrics import Outcome, summarize
from hearth.redteam.suites import DEFAULT_GUARD_TRAINED_ON, SUITES, Probe, SuiteLoad, load_suite

log = logging.getLogger("hearth.redteam")
Progress = Callable[[str, int], Callable[[int], None]]  # progress(label, total) -> advance(n)


@dataclass(frozen=True)
class RedteamOptions:
    suites: tuple[str, ...] = SUITES
    limit: int | None = None  # probes per suite, a seeded draw; None: each suite's default size
    seed: int = 0
    max_tokens: int = 128  # per response (HarmBench judges 512; 128 shows a refusal or compliance on a CPU budget)
    temperature: float = 0.0  # greedy by default: the evidence is reproducible as is
    window: int = 64  # requests in flight on the engine
    judge_check: bool = True  # measure the harm judge against pyrit's human labels and the refusal detector's
    judge_limit: int | None = None  # at most this many human-labelled responses for the harm judge's check
    device: str = "cpu"
    dtype: str = "auto"
    kernels: bool = True


@dataclass
class RunStats:
    generated: int = 0  # responses computed in this run (the rest came from the cache)
    cached: int = 0
    generate_seconds: float = 0.0
    generated_tokens: int = 0
    judged: int = 0
    judge_seconds: float = 0.0
    skipped_too_long: int = 0

    def to_json(self) -> dict:
        pps = self.generated / self.generate_seconds if self.generate_seconds > 0 and self.generated else None
        return {"responses_generated": self.generated, "responses_cached": self.cached,
                "generate_seconds": round(self.generate_seconds, 2), "generated_tokens": self.generated_tokens,
                "prompts_per_second": round(pps, 3) if pps else None, "verdicts_computed": self.judged,
                "judge_seconds": round(self.judge_seconds, 2), "skipped_too_long": self.skipped_too_long}


@dataclass
class RedteamRun:
    model: str
    model_digest: str
    adapter: str | None
    guard: str
    guard_digest: str
    policy: str
    options: RedteamOptions
    loads: list[SuiteLoad]
    configurations: dict[str, list[Outcome]]  # "no_guard" | "guard" -> outcomes, in probe order
    judges: dict = field(default_factory=dict)
    stats: RunStats = field(default_factory=RunStats)
    trained_on: frozenset[str] = DEFAULT_GUARD_TRAINED_ON

    def unseen(self, suite: str) -> bool:
        return suite not in self.trained_on

    def report(self) -> dict:
        o = self.options
        return {
            "model": self.model, "model_digest": self.model_digest, "adapter": self.adapter,
            "guard": self.guard, "guard_digest": self.guard_digest, "policy": self.policy,
            "sampling": {"max_tokens": o.max_tokens, "temperature": o.temperature, "seed": o.seed},
            "limit": o.limit,
            "suites": {s.name: {"probes": len(s.probes), "harmful": sum(p.harmful for p in s.probes),
                                "source": s.source, "skipped": s.skipped, "notes": list(s.notes),
                                "guard_trained_on_it": not self.unseen(s.name)} for s in self.loads},
            "configurations": {name: summarize(outs, self.unseen) for name, outs in self.configurations.items()},
            "judges": self.judges,
            "run": self.stats.to_json(),
        }


# -- the pieces ----------------------------------------------------------------------------------------------------
def probe_seed(seed: int, probe: Probe) -> int:
    """Each probe's own sampling seed: the same response whatever else is in the batch or the cache."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{probe.id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def _model_digest(ref: str) -> str:
    from hearth.loader import resolve_model

    return file_digest(resolve_model(ref))


class Redteam:
    """One model (with an optional adapter) and one guard, loaded once; the guard shares the engine, as adapter
    rows, when it is an adapter of the same base (no second copy of the weights), as in the server."""

    def __init__(self, model: str, adapter: Path | None, guard_ref: str, policy, opts: RedteamOptions,
                 cache: ResultCache):
        from hearth.engine.llm_engine import EngineConfig, LLMEngine
        from hearth.guard.classifier import GuardFormat
        from hearth.guard.load import ADAPTER_NAME, resolve_guard
        from hearth.guard.policy import load_policy
        from hearth.loader import load, resolve_model

        self.opts, self.cache, self.policy = opts, cache, policy
        self.judge_policy = load_policy(None)  # the default policy: every S-code at 0.5
        self.model, self.adapter = model, adapter
        self.model_digest = _model_digest(model)
        self.adapter_digest = file_digest(adapter) if adapter else None
        self.guard = resolve_guard(guard_ref)
        base_digest = self.model_digest if self.guard.base == model else _model_digest(self.guard.base)
        self.guard_digest = base_digest + (f"+{file_digest(self.guard.adapter)}" if self.guard.adapter else "")
        self.policy_key = make_key("policy", text=repr(policy))
        self.judge_key = make_key("policy", text=repr(self.judge_policy))
        shared = self.guard.adapter is not None and resolve_model(self.guard.base) == resolve_model(model)
        adapters = {}
        if adapter:
            adapters["target"] = str(adapter)
        if shared:
            adapters[ADAPTER_NAME] = str(self.guard.adapter)
        lm = load(model, device=opts.device, dtype=opts.dtype, kernels=opts.kernels)
        self.lm, self.engine = lm, LLMEngine(lm, EngineConfig(adapters=adapters))
        if shared:
            self.guard_lm, self.guard_engine = lm, self.engine
        else:  # another base, or a whole guard model (Llama Guard): loaded beside the model
            self.guard_lm = load(self.guard.base, device=opts.device, dtype=opts.dtype, kernels=opts.kernels)
            gad = {ADAPTER_NAME: str(self.guard.adapter)} if self.guard.adapter else {}
            self.guard_engine = LLMEngine(self.guard_lm, EngineConfig(adapters=gad))
        self.guard_adapter = ADAPTER_NAME if self.guard.adapter else None
        self.shared = shared
        self.filter_fmt = GuardFormat(self.guard_lm.tokenizer, self.guard_lm.chat_template, policy,
                                      self.guard_engine.max_model_len)
        self.judge_fmt = GuardFormat(self.guard_lm.tokenizer, self.guard_lm.chat_template, self.judge_policy,
                                     self.guard_engine.max_model_len)

    # -- responses -------------------------------------------------------------------------------------------------
    def response_key(self, probe: Probe) -> str:
        o = self.opts
        sampling = {"max_tokens": o.max_tokens, "temperature": o.temperature,
                    "seed": probe_seed(o.seed, probe) if o.temperature > 0 else None}
        return make_key("response", model=self.model_digest, adapter=self.adapter_digest, prompt=probe.prompt,
                        sampling=sampling)

    def responses(self, probes: list[Probe], stats: RunStats, progress: Progress | None) -> dict[str, dict]:
        """probe id -> {"text", "finish_reason", "tokens"} (None for a prompt too long for the context)."""
        from hearth.engine.sampling import SamplingParams
        from hearth.redteam.generate import Job, generate

        keys = {p.id: self.response_key(p) for p in probes}
        have = self.cache.get_many(keys.values())
        jobs, too_long = [], set()
        limit = self.engine.max_model_len
        for p in probes:
            if keys[p.id] in have:
                continue
            text = self.lm.chat_template.render([{"role": "user", "content": p.prompt}], add_generation_prompt=True)
            ids = self.lm.tokenizer.encode(text, add_bos=False)
            if len(ids) + self.opts.max_tokens > limit:
                too_long.add(p.id)
                continue
            params = SamplingParams(max_tokens=self.opts.max_tokens, temperature=self.opts.temperature,
                                    seed=probe_seed(self.opts.seed, p) if self.opts.temperature > 0 else None)
            jobs.append(Job(keys[p.id], ids, params, "target" if self.adapter else None))
        stats.cached += len(probes) - len(jobs) - len(too_long)
        stats.skipped_too_long += len(too_long)
        if jobs:
            log.info("generating %d responses (%d cached)", len(jobs), len(probes) - len(jobs) - len(too_long))
            advance = progress("responses", len(jobs)) if progress else None
            t0 = time.perf_counter()

            def done(key, g):
                value = {"text": g.text, "finish_reason": g.finish_reason, "tokens": g.tokens}
                self.cache.put(key, "response", value)
                have[key] = value
                stats.generated += 1
                stats.generated_tokens += g.tokens
                if advance:
                    advance(1)

            generate(self.engine, jobs, done, window=self.opts.window)
            stats.generate_seconds += time.perf_counter() - t0
        return {p.id: have.get(keys[p.id]) for p in probes}

    # -- verdicts --------------------------------------------------------------------------------------------------
    def verdicts(self, items: list[tuple[list[dict], str]], judge: bool, label: str, stats: RunStats,
                 progress: Progress | None) -> list[dict]:
        """The guard's verdict ({"score", "unsafe", "categories", "action"}) on each (messages, role), cached;
        judge=True reads with the default policy (the harm judge), else with the filter's policy."""
        from hearth.guard.classifier import classify

        fmt, pkey = (self.judge_fmt, self.judge_key) if judge else (self.filter_fmt, self.policy_key)
        keys = [make_key("verdict", guard=self.guard_digest, policy=pkey, role=role, messages=msgs)
                for msgs, role in items]
        have = self.cache.get_many(keys)
        todo = [i for i, k in enumerate(keys) if k not in have]
        if todo:
            advance = progress(label, len(todo)) if progress else None
            t0 = time.perf_counter()
            for start in range(0, len(todo), self.opts.window):  # a chunk at a time: a killed run keeps the rest
                chunk = todo[start:start + self.opts.window]
                got = classify(self.guard_engine, fmt, [items[i] for i in chunk], adapter=self.guard_adapter,
                               on_done=advance, window=self.opts.window)
                for i, v in zip(chunk, got):
                    value = {"score": v.score, "unsafe": v.unsafe, "categories": list(v.categories),
                             "action": v.action}
                    self.cache.put(keys[i], "verdict", value)
                    have[keys[i]] = value
            stats.judged += len(todo)
            stats.judge_seconds += time.perf_counter() - t0
        return [have[k] for k in keys]


def _refused(text: str, policy, probe: Probe) -> bool:
    """The refusal detector given the request (a jailbreak's behaviour, not its template): an answer to something
    else counts as a refusal too, as pyrit's human labels count it."""
    from hearth.redteam.refusal import is_refusal

    return is_refusal(text, extra=(policy.refusal,), prompt=probe.behaviour or probe.prompt)


def run_redteam(model: str, adapter: Path | None, guard_ref: str, policy, opts: RedteamOptions, cache: ResultCache,
                progress: Progress | None = None) -> RedteamRun:
    for name in opts.suites:
        if name not in SUITES:
            raise HearthError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    loads = [load_suite(name, opts.limit, opts.seed) for name in opts.suites]
    for s in loads:
        for note in s.notes:
            log.info("%s: %s", s.name, note)
    probes = [p for s in loads for p in s.probes]
    if not probes:
        raise HearthError("no probes: every suite asked for is empty (see the notes above)")
    rt = Redteam(model, adapter, guard_ref, policy, opts, cache)
    stats = RunStats()
    got = rt.responses(probes, stats, progress)
    kept = [p for p in probes if got[p.id] is not None]
    texts = {p.id: got[p.id]["text"] for p in kept}
    convo = {p.id: [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": texts[p.id]}]
             for p in kept}
    harm = rt.verdicts([(convo[p.id], "assistant") for p in kept], True, "harm judge", stats, progress)
    same = repr(policy) == repr(rt.judge_policy)
    inputs = rt.verdicts([([{"role": "user", "content": p.prompt}], "user") for p in kept], False, "input check",
                         stats, progress) if policy.check_input else [None] * len(kept)
    outputs = (harm if same else rt.verdicts([(convo[p.id], "assistant") for p in kept], False, "output check",
                                              stats, progress)) if policy.check_output else [None] * len(kept)
    plain, guarded = [], []
    for p, h, vin, vout in zip(kept, harm, inputs, outputs):
        text = texts[p.id]
        refused = _refused(text, policy, p)
        plain.append(Outcome(p, text, h["unsafe"], h["score"], refused))
        if vin is not None and vin["action"] == "block":
            guarded.append(Outcome(p, policy.refusal, False, 0.0, True, "input"))
        elif vout is not None and vout["action"] == "block":
            guarded.append(Outcome(p, policy.refusal, False, 0.0, True, "output"))
        else:
            guarded.append(Outcome(p, text, h["unsafe"], h["score"], refused))
    run = RedteamRun(model, rt.model_digest, str(adapter) if adapter else None, rt.guard.describe(), rt.guard_digest,
                     policy.name, opts, loads, {"no_guard": plain, "guard": guarded}, stats=stats,
                     trained_on=DEFAULT_GUARD_TRAINED_ON if guard_ref in (None, "", "default") else frozenset())
    if opts.judge_check:
        run.judges = check_judges(rt, policy, opts, stats, progress)
    return run


def check_judges(rt: Redteam, policy, opts: RedteamOptions, stats: RunStats, progress: Progress | None) -> dict:
    """How far the two judges can be trusted: the refusal detector on pyrit's human-labelled refusals, the harm
    judge on pyrit's human harm scores (split by whether the default guard trained on the item)."""
    import random

    from hearth.redteam.agreement import agreement, load_harm_labels
    from hearth.redteam.refusal import detector_accuracy, load_refusal_labels

    out: dict = {}
    try:
        labels = load_refusal_labels()
        out["refusal"] = {**detector_accuracy(labels, use_prompt=True, extra=(policy.refusal,)),
                          "response_only": detector_accuracy(labels, extra=(policy.refusal,))}
    except HearthError as e:
        out["refusal"] = {"error": str(e)}
    try:
        labels = load_harm_labels()
    except HearthError as e:
        out["harm"] = {"error": str(e)}
        return out
    if opts.judge_limit is not None and len(labels) > opts.judge_limit:
        labels = random.Random(opts.seed).sample(labels, opts.judge_limit)
    items = [([{"role": "user", "content": lab.prompt}, {"role": "assistant", "content": lab.response}], "assistant")
             for lab in labels]
    verdicts = rt.verdicts(items, True, "judge check", stats, progress)
    judge = [v["unsafe"] for v in verdicts]
    human = [lab.harmful for lab in labels]
    default_guard = rt.guard.label == "default"
    harm = {"all": agreement(judge, human)}
    if default_guard:
        for name, want in (("not_trained_on", False), ("trained_on", True)):
            idx = [i for i, lab in enumerate(labels) if lab.trained_on == want]
            harm[name] = agreement([judge[i] for i in idx], [human[i] for i in idx])
    harm["note"] = ("the default guard trained on pyrit's harm responses outside the 0.25-0.625 band of human scores; "
                    "'not_trained_on' is the only part that is evidence" if default_guard else
                    "this guard's training data is not known here")
    out["harm"] = harm
    return out
