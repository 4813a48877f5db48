"""The engine step: schedule → execute → update (sample, detokenize, stop, free).

Synchronous and single-threaded; `AsyncEngine` drives it from a background thread for the server.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from hearth.engine.generate import _StopMatcher, check_context
from hearth.engine.grammar_limits import StructureLimits
from hearth.engine.grammar_pool import compiler_for
from hearth.engine.kv_blocks import BlockManager, PrefixKeys
from hearth.engine.lora import ServedAdapters
from hearth.engine.request import EngineRequest, FinishReason, RequestOutput, TokenLogprob
from hearth.engine.runner import ModelRunner
from hearth.engine.sampling import Sampler
from hearth.engine.scheduler import Scheduler, Sequence
from hearth.engine.structured import Constraint
from hearth.errors import ContextLengthError, HearthError
from hearth.model.paged import PagedKVCache

log = logging.getLogger("hearth")


# On a 2-core CPU a mixed step with a 512-token chunk at 2K of context takes ~3.9 s, with 256 tokens ~2.1 s, at the
# same prefill rate (bench/prefill_stall.py: the long prompt's first token as soon): streams beside a long prompt
# wait half as long for each token at no cost. 128 would cut the wait to ~1.2 s for a ~17 % slower long prompt.
CPU_PREFILL_WITH_DECODES = 256


@dataclass
class EngineConfig:
    max_num_seqs: int = 64  # sequences decoded together
    max_num_batched_tokens: int = 512  # token budget per step (prefill chunk size)
    # prompt tokens in a step that also decodes; None: 256 on a CPU (where a step's time grows with its tokens:
    # bench/prefill_stall.py), no cap on a GPU; 0: no cap
    max_prefill_with_decodes: int | None = None
    block_size: int = 16
    num_blocks: int | None = None  # None: from kv_cache_bytes
    kv_cache_bytes: int = 1 << 30  # KV memory when num_blocks is not given
    max_waiting: int = 256  # queued requests beyond this are refused (HTTP 429)
    max_model_len: int | None = None  # None: the model's context length
    cuda_graphs: bool | None = None  # decode steps as CUDA graphs; None: on when the model is on a GPU
    triton: bool = True  # a lone sequence's graph step as hearth's Triton kernels where they apply
    triton_pdl: bool | None = None  # their programmatic dependent launch; None: on Hopper and later
    enable_prefix_caching: bool = True  # prompts reuse the cached KV blocks of a prefix already computed
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA adapters served beside the base: name -> PEFT dir
    # what a structured-output spec may hold and how long its compile may take (grammar_limits.py)
    structure_limits: StructureLimits = field(default_factory=StructureLimits)


@dataclass
class _ReqState:
    req: EngineRequest
    sampler: Sampler
    decoder: object
    stops: _StopMatcher
    prompt_logprobs: list = field(default_factory=list)
    first_token_time: float | None = None
    sent_prompt_logprobs: bool = False
    scores: dict[int, float] | None = None  # score_token_ids' logprobs, sent with the first token


def _logprob_entry(logprobs: torch.Tensor, token: int, k: int) -> TokenLogprob:
    top = []
    if k > 0:
        vals, idx = torch.topk(logprobs, k)
        top = list(zip(idx.tolist(), vals.tolist()))
    return TokenLogprob(token, float(logprobs[token]), top)


class LLMEngine:
    def __init__(self, lm, config: EngineConfig | None = None):
        self.lm = lm
        self.config = config = config or EngineConfig()
        self.tokenizer = lm.tokenizer
        self.max_model_len = min(config.max_model_len or lm.model.config.max_seq_len, lm.model.config.max_seq_len)
        num_blocks = config.num_blocks or max(
            config.kv_cache_bytes // PagedKVCache.bytes_per_block(lm.model.config, config.block_size, lm.model.cache_dtype), 1
        )
        if num_blocks * config.block_size < self.max_model_len:  # vLLM refuses to start; a smaller context serves
            log.warning("the KV cache holds %d tokens, less than the model's context of %d: serving a context of %d "
                        "(raise --kv-cache-gib for the full context)", num_blocks * config.block_size,
                        self.max_model_len, num_blocks * config.block_size)
            self.max_model_len = num_blocks * config.block_size
        self.blocks = BlockManager(num_blocks, config.block_size, enable_caching=config.enable_prefix_caching)
        cap = config.max_prefill_with_decodes
        if cap is None:
            cap = CPU_PREFILL_WITH_DECODES if lm.model.device.type == "cpu" else 0
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens, cap or None)
        self.runner = ModelRunner(lm.model, num_blocks, config.block_size, config.max_num_seqs, self.max_model_len,
                                  graphs=config.cuda_graphs, decoder=getattr(lm, "decoder", None),  # LoadedModel's
                                  triton=config.triton, pdl=config.triton_pdl)
        # wrapped after the runner recorded its fast paths (CUDA graphs, the native CPU step): those keep the base weights
        self.adapters = ServedAdapters(lm.model, config.adapters) if config.adapters else None
        self.runner.adapters = self.adapters
        if self.adapters is not None and self.runner.cpu_decoder is not None:
            self.runner.native_lora = self.adapters.register_native(lm.model, self.runner.cpu_decoder)
        if self.adapters is not None and self.runner.graphs is not None:
            self.runner.graphs.base_only = self.adapters.base_only
        self.seqs: dict[str, Sequence] = {}
        log.info("KV cache: %d blocks of %d tokens (%d tokens, %s, %.0f MiB)", num_blocks, config.block_size,
                 num_blocks * config.block_size, str(lm.model.cache_dtype).replace("torch.", ""),
                 self.runner.cache.k.nbytes * 2 / 2**20)

    # -- requests -----------------------------------------------------------------------------------
    def validate(self, req: EngineRequest, cancel=None) -> Constraint | None:
        """Raise HearthError for a request that can never run (checked before queueing). A structured request's spec
        is compiled here (a worker process proves it safe first: grammar_pool.py; a spec seen before is a cache
        hit), so call this off the step thread; the matcher it returns goes to `add_request`. `cancel`: a
        threading.Event that, once set, stops the compile (the client left)."""
        self._check(req)
        if req.params.structure is None:
            return None
        compiled = compiler_for(self.tokenizer, self.config.structure_limits).compile(req.params.structure, cancel)
        return Constraint(req.params.structure, compiled.matcher())

    def _check(self, req: EngineRequest) -> None:
        """validate's checks that cost nothing (no compile): also run on the step thread by add_request."""
        if any(not (0 <= t < self.tokenizer.vocab_size) for t in (*req.prompt_ids, *req.score_token_ids)):
            bad = next(t for t in (*req.prompt_ids, *req.score_token_ids) if not (0 <= t < self.tokenizer.vocab_size))
            raise HearthError(f"invalid token id {bad}: ids must be in [0, {self.tokenizer.vocab_size})")
        check_context(len(req.prompt_ids), req.params.max_tokens, self.max_model_len)
        self._adapter_index(req.adapter)
        need = self.blocks.blocks_for(len(req.prompt_ids) + req.params.max_tokens)
        if need > self.blocks.num_blocks:
            raise ContextLengthError(
                f"prompt + max tokens need {need} KV blocks but the cache has {self.blocks.num_blocks}; lower max_tokens"
            )

    def _adapter_index(self, name: str | None) -> int:
        """The served adapter a request names (0: the base model); HearthError for one not served."""
        if name and self.adapters is None:
            raise HearthError(f"no adapter named {name!r} is served (adapters: none)")
        return self.adapters.index(name) if self.adapters is not None else 0

    def add_request(self, req: EngineRequest, constraint: Constraint | None = None) -> None:
        """Queue a request. `constraint`: its structured output's matcher from `validate`; without one, a structured
        request is compiled here (fine for a caller driving the engine itself; AsyncEngine always passes it, so its
        step thread never compiles)."""
        if req.params.structure is not None and constraint is None:
            constraint = self.validate(req)
        else:
            self._check(req)
        if req.request_id in self.seqs:
            raise HearthError(f"duplicate request id {req.request_id}")
        seq = Sequence(req.request_id, list(req.prompt_ids), len(req.prompt_ids), req.params.max_tokens,
                       cacheable=req.prompt_logprobs is None,  # prompt logprobs need every position computed
                       prefix=PrefixKeys(salt=req.adapter or None),  # an adapter's KV is its own
                       adapter=self._adapter_index(req.adapter))
        seq.data = _ReqState(req, Sampler(req.params, self.tokenizer, constraint), self.tokenizer.stream(),
                             _StopMatcher(req.params.stop))
        self.seqs[req.request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> bool:
        seq = self.seqs.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.finish(seq)
        return True

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # -- the step -----------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        # Requests that want nothing generated (max_tokens=0, e.g. echo + logprobs scoring) still need a
        # forward pass for prompt logprobs; those with no logprobs finish at once.
        for seq in [s for s in self.scheduler.waiting if s.max_tokens == 0 and s.data.req.prompt_logprobs is None]:
            outputs.append(self._finish(seq, FinishReason.LENGTH, [], ""))
        plan = self.scheduler.schedule()
        if not plan.scheduled:
            return outputs
        want_all = [
            s.seq.data.req.prompt_logprobs is not None and not s.seq.data.sent_prompt_logprobs
            and s.seq.num_computed < s.seq.num_prompt
            for s in plan.scheduled
        ]
        result = self.runner.execute(plan, want_all)
        self.scheduler.after_step(plan)
        now = time.monotonic()
        for s, row, span in zip(plan.scheduled, result.last, result.all):
            seq, st = s.seq, s.seq.data
            if span is not None:
                self._collect_prompt_logprobs(seq, s.num_tokens, result.rows(*span))
            if row is None:
                continue
            if seq.num_generated >= seq.max_tokens:  # max_tokens == 0: prompt scored, nothing to generate
                outputs.append(self._finish(seq, FinishReason.LENGTH, [], st.stops.flush()))
                continue
            lps = scores = None
            score_now = bool(st.req.score_token_ids) and seq.num_generated == 0
            if st.sampler.plain_greedy and st.req.logprobs is None and not score_now:
                token = result.greedy[row]  # chosen on the device: no row of logits comes back
            else:
                last = result.row(row)
                token = st.sampler(last, torch.tensor(seq.token_ids, dtype=torch.long))
                if st.req.logprobs is not None or score_now:
                    logprobs = torch.log_softmax(last.float(), -1)
                    if st.req.logprobs is not None:
                        lps = [_logprob_entry(logprobs, token, st.req.logprobs)]
                    if score_now:
                        scores = {t: float(logprobs[t]) for t in st.req.score_token_ids}
            seq.token_ids.append(token)
            st.first_token_time = st.first_token_time or now
            st.scores = scores
            if token in self.tokenizer.eos_ids and (not st.req.params.ignore_eos or st.sampler.done):
                text = st.stops.feed(st.decoder.flush())[0] + st.stops.flush()
                outputs.append(self._finish(seq, FinishReason.STOP, [token], text, lps))
                continue
            text, stopped = st.stops.feed(st.decoder.push(token))
            if stopped or st.sampler.done:  # a stop string, or structured output that is complete
                if not stopped:
                    tail, stopped = st.stops.feed(st.decoder.flush())
                    text += tail + ("" if stopped else st.stops.flush())
                outputs.append(self._finish(seq, FinishReason.STOP, [token], text, lps))
            elif seq.num_generated >= seq.max_tokens:
                tail, stopped = st.stops.feed(st.decoder.flush())
                text += tail + ("" if stopped else st.stops.flush())
                outputs.append(self._finish(seq, FinishReason.STOP if stopped else FinishReason.LENGTH, [token], text, lps))
            else:
                outputs.append(self._output(seq, [token], text, lps))
        return outputs

    def _collect_prompt_logprobs(self, seq: Sequence, n: int, rows: torch.Tensor) -> None:
        st = seq.data
        k = st.req.prompt_logprobs
        start = seq.num_computed - n  # already advanced by after_step
        if start == 0:  # (again, after a preemption: recomputed from scratch)
            st.prompt_logprobs = [None]  # nothing predicts the first token
        logprobs = torch.log_softmax(rows.float(), -1)
        for i in range(n):
            target = start + i + 1
            if target < seq.num_prompt:
                st.prompt_logprobs.append(_logprob_entry(logprobs[i], seq.token_ids[target], k))

    def _output(self, seq: Sequence, new: list[int], text: str, lps=None, finished=False, reason=None) -> RequestOutput:
        st = seq.data
        out = RequestOutput(
            request_id=seq.request_id, new_token_ids=new, new_text=text, finished=finished, finish_reason=reason,
            logprobs=lps, num_prompt_tokens=seq.num_prompt, num_generated_tokens=seq.num_generated,
            num_cached_tokens=seq.cached_tokens,
        )
        if st.req.prompt_logprobs is not None and not st.sent_prompt_logprobs:
            out.prompt_logprobs = st.prompt_logprobs
            st.sent_prompt_logprobs = True
        out.scores, st.scores = st.scores, None
        return out

    def _finish(self, seq: Sequence, reason: FinishReason, new: list[int], text: str, lps=None) -> RequestOutput:
        self.scheduler.finish(seq)
        self.seqs.pop(seq.request_id, None)
        return self._output(seq, new, text, lps, finished=True, reason=reason)
