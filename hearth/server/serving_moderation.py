"""POST /v1/moderations: each text → the guard (as a user's message) → OpenAI's moderation result.

The texts of one request are classified side by side, so their guard requests share engine steps (and, with the
guard on the served engine, steps with other traffic). A server started without --guard answers 404 in OpenAI's
error shape, saying so.
"""

from __future__ import annotations

from hearth.guard.classifier import Verdict
from hearth.guard.policy import Policy
from hearth.guard.taxonomy import OPENAI_CATEGORIES, OPENAI_NAMES
from hearth.server.common import ServerContext, random_id
from hearth.server.errors import BadRequest, ModelNotFound, NotFound
from hearth.server.guarding import gather_all
from hearth.server.protocol.moderation import ModerationRequest, ModerationResponse, ModerationResult
from hearth.tokenizer.limits import surely_too_long


def moderation_result(verdict: Verdict, policy: Policy) -> ModerationResult:
    named = {c for c in verdict.categories if c in policy.codes}
    flags = {name: False for name in OPENAI_CATEGORIES} | {code: False for code in policy.codes}
    scores = dict.fromkeys(flags, 0.0)
    for code in named:
        flagged = policy.action(code) != "allow"
        for key in (code, *OPENAI_NAMES.get(code, ())):
            flags[key] = flags[key] or flagged
            scores[key] = round(verdict.score, 6)
    return ModerationResult(flagged=verdict.action != "allow", categories=flags, category_scores=scores,
                            category_applied_input_types={name: ["text"] for name in OPENAI_CATEGORIES})


class ModerationService:
    def __init__(self, ctx: ServerContext):
        self.ctx = ctx

    async def create(self, req: ModerationRequest) -> ModerationResponse:
        guard = self.ctx.guard
        if guard is None:
            raise NotFound("this server runs no guard, so /v1/moderations is off: start it with "
                           "`hearth serve MODEL --guard default` (or --guard PATH)", code="guard_not_enabled")
        model = guard.model_name(req.model)
        if model is None:
            raise ModelNotFound(f"the moderation model '{req.model}' does not exist; this server's guard answers to "
                                "'guard' (or leave model out)", param="model")
        texts = req.texts()
        await self.ctx.off_loop(self._check_lengths, texts)
        checks = await gather_all(guard.check(self.ctx, [{"role": "user", "content": t}], "moderation") for t in texts)
        return ModerationResponse(id=random_id("modr"), model=model,
                                  results=[moderation_result(c.verdict, guard.policy) for c in checks])

    def _check_lengths(self, texts: list[str]) -> None:
        """Refuse a text the guard's context surely cannot hold (from its length: limits.py), before tokenizing it.
        Shorter ones that still do not fit are cut in the middle by the guard's format (GuardFormat.prompt_ids)."""
        engine = self.ctx.guard.engine
        for i, text in enumerate(texts):
            if surely_too_long(engine.tokenizer, text, engine.max_model_len):
                raise BadRequest(f"input item {i} is {len(text)} characters long, more than the guard's context of "
                                 f"{engine.max_model_len} tokens can hold: shorten it", param="input",
                                 code="context_length_exceeded")
