"""Conversations in, verdicts out: the guard's prompt ids, its answer read as a score, and a batch run on an engine.

The score is P(unsafe) / (P(unsafe) + P(safe)) at the first answer token, as in the Llama Guard paper (Inan et al.,
2023, section 3): the two tokens' probabilities at the one position where the answers part. It is what AUPRC and
thresholds are computed from; the categories are the codes the guard writes on its second line, read by greedy
decoding of a few more tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hearth.errors import HearthError
from hearth.guard.policy import Policy
from hearth.guard.prompt import check_messages, guard_text, native_template, parse_answer

ANSWER_TOKENS = 12  # "unsafe\nS1,S10,S14" and an end token: enough for three codes


@dataclass(frozen=True)
class Verdict:
    score: float  # P(unsafe) against P(safe) at the first answer token
    unsafe: bool  # score >= the policy's threshold
    categories: tuple[str, ...]  # codes the guard named (empty when safe)
    action: str  # the policy's decision: block | flag | allow
    dropped_turns: int = 0  # oldest turns left out to fit the guard's context
    answer: str = ""  # what the guard wrote

    def to_json(self) -> dict:
        return {"flagged": self.action != "allow", "categories": list(self.categories), "score": round(self.score, 6)}


class GuardTemplateError(HearthError):
    """The guard model's tokenizer or template cannot carry the Llama Guard format."""


class GuardFormat:
    """The Llama Guard format for one guard model (its tokenizer and chat template) and one policy."""

    def __init__(self, tokenizer, chat_template, policy: Policy, max_len: int):
        self.tokenizer, self.template, self.policy = tokenizer, chat_template, policy
        self.native = native_template(getattr(chat_template, "source", None))
        self.max_len = max_len
        # Llama Guard 3 answers "\n\nsafe" after its template's assistant header; a chat model tuned here answers
        # right after its generation prompt. The tokens both answers share are fed with the prompt; the first one
        # where they part is scored.
        lead = "\n\n" if self.native else ""
        safe = tokenizer.encode(lead + "safe", add_bos=False)
        unsafe = tokenizer.encode(lead + "unsafe", add_bos=False)
        n = 0
        while n < min(len(safe), len(unsafe)) and safe[n] == unsafe[n]:
            n += 1
        if n >= min(len(safe), len(unsafe)):
            raise GuardTemplateError("the guard's tokenizer does not tell 'safe' from 'unsafe' in one token")
        self.lead_ids, self.safe_id, self.unsafe_id = safe[:n], safe[n], unsafe[n]
        if self.native:
            self._check_native_categories()

    # -- prompts -----------------------------------------------------------------------------------------------
    def render(self, turns: list[dict], role: str) -> str:
        if self.native:
            cats = {c.code: c.line(not c.code_is_builtin)[len(c.code) + 2:] for c in self.policy.categories}
            return self.template.render(turns, add_generation_prompt=True, categories=cats, excluded_category_keys=[])
        return self.template.render([{"role": "user", "content": guard_text(turns, role, list(self.policy.categories))}],
                                    add_generation_prompt=True)

    def _check_native_categories(self) -> None:
        """A Llama Guard template that fixes its categories (Llama Guard 3 8B's) cannot take a policy's own."""
        text = self.render([{"role": "user", "content": "x"}], "user")
        missing = [c.code for c in self.policy.categories if f"{c.code}: " not in text]
        if missing:
            raise GuardTemplateError(f"the guard model's chat template does not list {', '.join(missing)}: it fixes "
                                     "its own categories; use a policy with only those, or a guard tuned here")

    def prompt_ids(self, messages: list[dict], role: str, answer_tokens: int = ANSWER_TOKENS) -> tuple[list[int], int]:
        """(prompt ids, oldest turns dropped). A conversation longer than the guard's context keeps its latest turns;
        a last message longer than it alone keeps its beginning and end."""
        turns = check_messages(messages, role)
        budget = self.max_len - answer_tokens - len(self.lead_ids)
        dropped = 0
        while True:
            ids = self.tokenizer.encode(self.render(turns, role), add_bos=False)
            if len(ids) <= budget:
                return ids + self.lead_ids, dropped
            if len(turns) > 1:
                turns, dropped = turns[1:], dropped + 1
                while turns[0]["role"] != "user" and len(turns) > 1:  # a conversation starts with the user
                    turns, dropped = turns[1:], dropped + 1
                continue
            text = turns[0]["content"]
            over = len(ids) - budget
            # characters a token as the whole prompt has them (digits can be 1, prose ~4); the next round checks again
            keep = len(text) - int(over * len(text) / len(ids)) - 64
            if keep < 64:
                raise HearthError(f"the guard's context ({self.max_len} tokens) cannot hold its own instructions")
            turns = [{**turns[0], "content": text[: keep // 2] + " … " + text[len(text) - keep // 2:]}]

    # -- answers -----------------------------------------------------------------------------------------------
    def score(self, scores: dict[int, float] | None) -> float:
        if not scores:
            raise HearthError("the engine returned no first-token scores for the guard's answer")
        u, s = scores[self.unsafe_id], scores[self.safe_id]
        m = max(u, s)
        return math.exp(u - m) / (math.exp(u - m) + math.exp(s - m))

    def verdict(self, answer: str, scores: dict[int, float] | None, dropped: int = 0) -> Verdict:
        p = self.score(scores)
        unsafe = p >= self.policy.threshold
        codes = parse_answer(answer).codes if unsafe else ()
        if unsafe and not parse_answer(answer).unsafe:
            codes = ()  # scored unsafe at the threshold, answered otherwise under greedy decoding: no codes
        return Verdict(p, unsafe, codes, self.policy.decide(unsafe, codes), dropped, answer)


def classify(engine, fmt: GuardFormat, items: Iterable[tuple[list[dict], str]], adapter: str | None = None,
             on_done: Callable[[int], None] | None = None, window: int = 64) -> list[Verdict]:
    """Verdicts for (messages, role) items, batched on a synchronous LLMEngine (prefix caching makes the shared
    instructions cost one prefill). `window`: requests in flight at once."""
    from hearth.engine.request import EngineRequest
    from hearth.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=ANSWER_TOKENS, temperature=0.0)
    pending = list(items)
    results: list[Verdict | None] = [None] * len(pending)
    texts: dict[str, list] = {}
    nxt = 0
    while nxt < len(pending) or texts:
        while nxt < len(pending) and len(texts) < window:
            ids, dropped = fmt.prompt_ids(*pending[nxt])
            rid = str(nxt)
            engine.add_request(EngineRequest(rid, ids, params, adapter=adapter,
                                             score_token_ids=(fmt.safe_id, fmt.unsafe_id)))
            texts[rid] = ["", None, dropped]
            nxt += 1
        for out in engine.step():
            t = texts[out.request_id]
            t[0] += out.new_text
            if out.scores is not None:
                t[1] = out.scores
            if out.finished:
                i = int(out.request_id)
                results[i] = fmt.verdict(t[0], t[1], t[2])
                del texts[out.request_id]
                if on_done:
                    on_done(1)
    return results  # type: ignore[return-value]
