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
from hearth.tokenizer.chat import TemplateError
from hearth.tokenizer.limits import chars_per_token

ANSWER_TOKENS = 12  # "unsafe\nS1,S10,S14" and an end token: enough for three codes
MIN_KEEP_CHARS = 64  # a message is never cut shorter
CUT = " … "  # where a message too long for the guard's context lost its middle


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
        self.text_parts = False  # Llama Guard 3 1B's template reads content as [{"type": "text", ...}] parts
        self.own_categories = ""  # a prompt the template wrote with its own categories (given none)
        if self.native:
            self._probe_native()

    # -- prompts -----------------------------------------------------------------------------------------------
    def render(self, turns: list[dict], role: str) -> str:
        if self.native:
            # A category the template does not name by itself (a policy's own, or S14 to Llama Guard 3 1B, which
            # knows 13) carries its description: the model knows it only from that text, as in llama-recipes.
            cats = {c.code: c.line(not c.code_is_builtin or c.line(False) not in self.own_categories)[len(c.code) + 2:]
                    for c in self.policy.categories}
            return self._render_native(turns, self.text_parts, categories=cats, excluded_category_keys=[])
        return self.template.render([{"role": "user", "content": guard_text(turns, role, list(self.policy.categories))}],
                                    add_generation_prompt=True)

    def _render_native(self, turns: list[dict], parts: bool, **kwargs) -> str:
        if parts:
            turns = [{"role": t["role"], "content": [{"type": "text", "text": t["content"]}]} for t in turns]
        return self.template.render(turns, add_generation_prompt=True, **kwargs)

    def _probe_native(self) -> None:
        """How the template takes a message (a text, or a list of text parts: it shows the one it understands and
        silently drops the other), which categories it lists by itself, and whether it takes the policy's."""
        mark = "hearth guard probe"
        probe = [{"role": "user", "content": mark}]
        for parts in (False, True):
            try:
                own = self._render_native(probe, parts)
            except TemplateError:
                continue
            if mark in own:
                self.text_parts, self.own_categories = parts, own
                break
        else:
            raise GuardTemplateError("the guard model's chat template shows no conversation given text or text parts; "
                                     "it cannot carry the Llama Guard format")
        text = self.render(probe, "user")
        missing = [c.code for c in self.policy.categories if f"\n{c.line(not c.code_is_builtin)}" not in text]
        if missing:
            raise GuardTemplateError(f"the guard model's chat template does not list {', '.join(missing)} as the "
                                     "policy has them: it fixes its own categories; use a policy with only those, or a "
                                     "guard tuned here")

    def prompt_ids(self, messages: list[dict], role: str, answer_tokens: int = ANSWER_TOKENS) -> tuple[list[int], int]:
        """(prompt ids, oldest turns dropped). A conversation longer than the guard's context keeps its latest turns
        (a response keeps the prompt it answers); a message too long even then keeps its beginning and end."""
        turns = check_messages(messages, role)
        budget = self.max_len - answer_tokens - len(self.lead_ids)
        if budget <= 0:
            raise HearthError(f"the guard's context ({self.max_len} tokens) cannot hold its own instructions and a "
                              "message; use a guard with a longer context")
        keep_turns = 2 if role == "assistant" else 1
        dropped = 0
        # A text longer than budget x (most characters one token covers) surely does not fit: cut it before
        # tokenizing a megabyte (hearth.tokenizer.limits says why the bound holds).
        most = chars_per_token(self.tokenizer)
        if most is not None:
            turns = [{**t, "content": _middle_out(t["content"], budget * most)} for t in turns]
        while True:
            ids = self.tokenizer.encode(self.render(turns, role), add_bos=False)
            if len(ids) <= budget:
                return ids + self.lead_ids, dropped
            if len(turns) > keep_turns:  # the oldest exchange goes (turns alternate from the user's)
                cut = min(2, len(turns) - keep_turns)
                turns, dropped = turns[cut:], dropped + cut
                continue
            # the longest message gives up its middle: as many characters as its share of the tokens over, and a
            # few spare for the seams (a token estimate that fits every script, not ~4 characters a token)
            i = max(range(len(turns)), key=lambda j: len(turns[j]["content"]))
            text = turns[i]["content"]
            if len(text) <= MIN_KEEP_CHARS:  # every message is already cut down: the instructions alone are too long
                raise HearthError(f"the guard's context ({self.max_len} tokens) cannot hold its own instructions "
                                  "and a message; use a guard with a longer context")
            text_tokens = max(len(self.tokenizer.encode(text, add_bos=False)), 1)
            room = text_tokens - (len(ids) - budget) - 8
            keep = max(MIN_KEEP_CHARS, len(text) * room // text_tokens)
            turns = [*turns[:i], {**turns[i], "content": _middle_out(text, keep)}, *turns[i + 1:]]

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


def _middle_out(text: str, keep: int) -> str:
    """`text` cut to at most `keep` characters (`keep` >= 5), its beginning and end kept (where a request's
    instructions and its payload usually are)."""
    if len(text) <= keep:
        return text
    half = (keep - len(CUT)) // 2
    return text[:half] + CUT + text[len(text) - half:]


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
