"""POST /tokenize, POST /detokenize, GET /tokenizer_info: the model's tokenizer over HTTP (vLLM's routes).

lm-evaluation-harness's remote tokenizer uses these to count and split text exactly as the server does.
"""

from __future__ import annotations

from hearth.server import tool_calls
from hearth.server.common import ServerContext
from hearth.server.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)


class TokenizeService:
    def __init__(self, ctx: ServerContext):
        self.ctx = ctx

    async def tokenize(self, req: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
        """Rendered and tokenized in a prompt thread: a megabyte of text or a slow template never blocks the loop.
        No length check: counting a text longer than the context is what this route is for."""
        self.ctx.check_model(req.model)
        return await self.ctx.off_loop(self._tokenize, req)

    def _tokenize(self, req: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
        engine = self.ctx.engine
        tok = engine.tokenizer
        if isinstance(req, TokenizeChatRequest):
            # the same prompt the chat endpoint builds for these messages and tools
            messages, extra = tool_calls.prompt(req.messages, req.tools or None, engine.chat_template.source)
            text = engine.chat_template.render(messages, req.add_generation_prompt, **extra)
            ids = tok.encode(text, add_bos=None if req.add_special_tokens else False)
        else:
            # add_special_tokens: the model's own rule (BOS for Llama, nothing for SmolLM2), as HF tokenizers do
            ids = tok.encode(req.prompt, add_bos=None if req.add_special_tokens else False)
        strs = [self.ctx.token_str(t) for t in ids] if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=engine.max_model_len, tokens=ids, token_strs=strs)

    async def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        self.ctx.check_model(req.model)
        return await self.ctx.off_loop(self._detokenize, req)

    def _detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        self.ctx.check_token_ids(req.tokens, "tokens")
        return DetokenizeResponse(prompt=self.ctx.engine.tokenizer.decode(req.tokens))

    def info(self) -> dict:
        engine = self.ctx.engine
        tok = engine.tokenizer

        def text(i: int | None) -> str | None:
            return None if i is None else tok.token_text(i)

        eos = tok.eos_ids[0] if tok.eos_ids else None
        return {
            "tokenizer_class": "hearth",
            "eos_token": text(eos),
            "eos_token_id": eos,
            "eos_token_ids": list(tok.eos_ids),
            "bos_token": text(tok.bos_id),
            "bos_token_id": tok.bos_id,
            "pad_token": text(tok.pad_id),
            "pad_token_id": tok.pad_id,
            "add_bos_token": tok.add_bos,
            "vocab_size": tok.vocab_size,
            "model_max_length": engine.max_model_len,
            "chat_template": engine.chat_template.source,  # the one in use (ChatML when the model has none)
        }

