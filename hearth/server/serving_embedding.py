"""POST /v1/embeddings: texts → token ids → the model's pooled, normalized hidden states (Transformer.embed).

The model belongs to the engine thread, so each input runs there between generation steps (AsyncEngine.call):
streams keep flowing while a batch of texts is embedded, one text at a time.
"""

from __future__ import annotations

import base64

from hearth.server.access_log import note_usage
from hearth.server.common import ServerContext
from hearth.server.errors import BadRequest
from hearth.server.protocol import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage

MAX_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingService:
    def __init__(self, ctx: ServerContext):
        self.ctx = ctx

    async def create(self, req: EmbeddingRequest) -> EmbeddingResponse:
        model = self.ctx.check_model(req.model)
        if self.ctx.adapter(req.model):
            raise BadRequest(f"'{req.model}' is a LoRA adapter; embeddings come from the base model: "
                             f"ask with model '{self.ctx.model_name}'", param="model")
        engine = self.ctx.engine
        inputs = req.inputs()
        if len(inputs) > MAX_INPUTS:
            raise BadRequest(f"input has {len(inputs)} items; at most {MAX_INPUTS} per request", param="input")
        dim = engine.embedding_dim
        if req.dimensions is not None and not 1 <= req.dimensions <= dim:
            raise BadRequest(f"dimensions={req.dimensions} is not possible: this model's embeddings have {dim}",
                             param="dimensions")
        all_ids = await self.ctx.off_loop(self._ids, inputs)
        data = []
        for i, ids in enumerate(all_ids):
            vec = await engine.call(lambda lm, ids=ids: lm.model.embed(ids))
            if req.dimensions is not None and req.dimensions < dim:
                # OpenAI's shortened embeddings: the first `dimensions` values, normalized again to length 1
                vec = vec[: req.dimensions]
                vec = vec / vec.norm().clamp_min(1e-12)
            if req.encoding_format == "base64":
                out = base64.b64encode(vec.numpy().astype("<f4").tobytes()).decode("ascii")
            else:
                out = vec.tolist()
            data.append(Embedding(index=i, embedding=out))
        n = sum(len(ids) for ids in all_ids)
        note_usage(n)
        return EmbeddingResponse(data=data, model=model, usage=EmbeddingUsage(prompt_tokens=n, total_tokens=n))

    def _ids(self, inputs: list) -> list[list[int]]:
        """Blocking (tokenization): called in a prompt thread (ServerContext.off_loop), each text checked for length
        before it is tokenized."""
        engine = self.ctx.engine
        all_ids = []
        for i, x in enumerate(inputs):
            where = "input" if len(inputs) == 1 else f"input.{i}"
            if isinstance(x, str):
                self.ctx.check_text_fits(x, where)
            ids = engine.tokenizer.encode(x) if isinstance(x, str) else list(x)
            try:
                self.ctx.check_token_ids(ids, where)
            except BadRequest as e:  # most likely another tokenizer's ids
                raise BadRequest(f"{e.message}: token ids must be this model's own; send text instead (LangChain's "
                                 "OpenAIEmbeddings sends tiktoken's ids unless check_embedding_ctx_length=False)",
                                 param=where) from None
            if not ids:
                raise BadRequest(f"{where} is empty: give at least one token", param=where)
            if len(ids) > engine.max_model_len:
                raise BadRequest(f"{where} has {len(ids)} tokens; this model's maximum context length is "
                                 f"{engine.max_model_len}: shorten it", param=where, code="context_length_exceeded")
            all_ids.append(ids)
        return all_ids

