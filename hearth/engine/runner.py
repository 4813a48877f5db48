"""Turns a scheduler plan into tensors, runs the model once, returns the logits that are needed.

Two ways to run a step:
  * eager: any mix of prefill chunks and decode tokens, shapes as they come (`Transformer.forward_paged`);
  * CUDA graph (GPU only): steps where every sequence decodes one token. The batch is padded to a bucket size and
    each sequence's block table to a bucket width, so a handful of shapes cover every step; each is recorded once
    and replayed (one launch instead of hundreds). Padded rows write their K/V to a scratch block nobody owns.
    A lone sequence (batch 1, bf16/fp16) runs hearth's Triton step (hearth/fast/gpu_decode.py) over its block table.
  * native (CPU, GGUF block weights): the same all-decode steps as one whole-token call into hearth's kernels
    (DecodePlan.step_paged via CPUDecoder.paged), reading and writing the paged cache through the block tables.
The greedy choice of every row (argmax) is made on the device, so the engine copies back one id per sequence, not a
row of logits, for sequences that sample greedily without penalties or logprobs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hearth.engine.scheduler import SchedulerOutput
from hearth.fast.cpu_decode import CPUDecoder
from hearth.fast.gpu_decode import GPUDecoder
from hearth.fast.static_decode import record_graph
from hearth.model import Transformer
from hearth.model.paged import BatchMeta, PagedKVCache, PrefillChunk


@dataclass
class StepResult:
    """The step's logits rows (on the model's device) and where each scheduled sequence's rows are.

    `last[i]` is the row that predicts sequence i's next token (None when it is mid-prefill); `all[i]` the
    (start, end) rows of its whole chunk (only for sequences that asked for prompt logprobs). `greedy` holds the
    argmax of each row, computed on the device.
    """

    logits: Tensor
    greedy: list[int]
    last: list[int | None]
    all: list[tuple[int, int] | None]

    def row(self, r: int) -> Tensor:
        return self.logits[r].cpu()

    def rows(self, a: int, b: int) -> Tensor:
        return self.logits[a:b].cpu()


def _bucket(n: int, sizes: list[int]) -> int:
    return next(s for s in sizes if s >= n)


def _padded_tables(tables: list[list[int]], rows: int, width: int, fill: int) -> np.ndarray:
    """Block tables as one (rows, width) array; missing entries and rows point at block `fill` (the scratch block)."""
    out = np.full((rows, width), fill, dtype=np.int64)
    for i, t in enumerate(tables):
        out[i, : len(t)] = t
    return out


class DecodeGraphs:
    """CUDA graphs of the all-decode step, one per (padded batch, padded block-table width), recorded on first use."""

    def __init__(self, model: Transformer, cache: PagedKVCache, max_num_seqs: int, max_blocks_per_seq: int,
                 scratch_block: int, triton: bool = True, pdl: bool | None = None):
        self.model, self.cache, self.scratch_block = model, cache, scratch_block
        self.triton, self.pdl = triton, pdl  # hearth's Triton step for a lone sequence; its dependent launch
        bs = cache.block_size
        self.batch_sizes = sorted({b for b in (1, 2, 4, 8, 16, 24, 32, 48, 64) if b < max_num_seqs} | {max_num_seqs})
        self.widths = []
        w = 1
        while w < max_blocks_per_seq:
            self.widths.append(w)
            w *= 2
        self.widths.append(max_blocks_per_seq)
        dev = model.device
        B, W = self.batch_sizes[-1], self.widths[-1]
        # Static inputs: every graph reads a leading slice of these, so they are filled in place before a replay.
        self.tokens = torch.zeros(B, dtype=torch.long, device=dev)
        self.positions = torch.zeros(B, dtype=torch.long, device=dev)
        self.tables = torch.full((B, W), scratch_block, dtype=torch.long, device=dev)
        self.offsets = torch.arange(bs, device=dev)
        # On a CPU (tests) the padded step runs without recording: same shapes and arithmetic, no graph.
        self.record = dev.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if self.record else None
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}
        self.block_size = bs
        self.steps = 0  # steps run this way (for tests and logs)
        self.triton_buckets: set[tuple[int, int]] = set()  # recorded as hearth's Triton step
        self.base_only = contextlib.nullcontext  # served LoRA adapters: the base modules while recording

    def _forward(self, b: int, w: int) -> tuple[Tensor, Tensor]:
        bs = self.block_size
        pos, table = self.positions[:b], self.tables[:b, :w]
        key_slots = (table[:, :, None] * bs + self.offsets).view(b, w * bs)  # (b, L) cache slot of every key
        slots = key_slots.gather(1, pos[:, None]).squeeze(1)  # where this token's K/V goes
        mask = (torch.arange(w * bs, device=pos.device)[None, :] <= pos[:, None]).view(b, 1, 1, w * bs)
        meta = BatchMeta(positions=pos, slot_mapping=slots, decode_rows=torch.arange(b, device=pos.device),
                         decode_key_slots=key_slots, decode_key_mask=mask)
        logits = self.model.forward_paged(self.tokens[:b], self.cache, meta, None)
        return logits, logits.argmax(-1)

    def run(self, tokens: list[int], positions: list[int], tables: list[list[int]]) -> tuple[Tensor, Tensor]:
        n = len(tokens)
        self.steps += 1
        b = _bucket(n, self.batch_sizes)
        w = _bucket(max(len(t) for t in tables), self.widths)
        table = _padded_tables(tables, b, w, self.scratch_block)
        pos = np.zeros(b, dtype=np.int64)
        pos[:n] = positions  # padded rows: position 0 of the scratch block
        tok = np.zeros(b, dtype=np.int64)
        tok[:n] = tokens
        self.tokens[:b].copy_(torch.from_numpy(tok), non_blocking=True)
        self.positions[:b].copy_(torch.from_numpy(pos), non_blocking=True)
        self.tables[:b, :w].copy_(torch.from_numpy(table), non_blocking=True)
        if not self.record:
            logits, greedy = self._forward(b, w)
            return logits[:n], greedy[:n]
        if (b, w) not in self.graphs:
            self._record(b, w)
        graph, logits, greedy = self.graphs[(b, w)]
        graph.replay()
        return logits[:n], greedy[:n]

    def _record(self, b: int, w: int) -> None:
        with self.base_only():
            self._record_base(b, w)

    def _record_base(self, b: int, w: int) -> None:
        if b == 1 and self.triton and GPUDecoder.usable(self.model, 1, self.cache):
            # one sequence decoding (a single client): hearth's Triton step over its block table, as `hearth run`
            dec = GPUDecoder(self.model, self.cache, self.tokens[:1].view(1, 1), self.positions[:1],
                             table=self.tables[0, :w], pdl=self.pdl)

            def fn():
                logits = dec.step()
                return logits, logits.argmax(-1)
            self.triton_buckets.add((b, w))
        else:
            def fn():
                return self._forward(b, w)
        graph, (logits, greedy) = record_graph(fn, pool=self.pool)
        self.graphs[(b, w)] = (graph, logits, greedy)


class ModelRunner:
    """decoder: the loaded model's whole-step CPU decoder (LoadedModel.decoder), for all-decode steps on a CPU.
    triton / pdl: whether CUDA-graph steps of a lone sequence may run hearth's Triton step, and its dependent launch
    (None: where the GPU has it)."""

    def __init__(self, model: Transformer, num_blocks: int, block_size: int, max_num_seqs: int = 64,
                 max_model_len: int | None = None, graphs: bool | None = None, decoder: CPUDecoder | None = None,
                 triton: bool = True, pdl: bool | None = None):
        self.model = model
        self.block_size = block_size
        self.device = model.device
        # one block more than the scheduler hands out: the scratch block that padded graph rows write to
        self.scratch_block = num_blocks
        self.cache = PagedKVCache(model.config, num_blocks + 1, block_size, model.device, model.cache_dtype)
        use_graphs = self.device.type == "cuda" if graphs is None else graphs
        max_len = max_model_len or model.config.max_seq_len
        self.graphs = (
            DecodeGraphs(model, self.cache, max_num_seqs, -(-max_len // block_size), self.scratch_block, triton, pdl)
            if use_graphs else None
        )
        # On the CPU, with GGUF block weights: all-decode steps run the whole token in one native call
        # (CPUDecoder.paged, hearth/fast/cpu_decode.py), as `hearth run` does; everything else stays eager.
        dec = decoder
        with torch.no_grad():  # steps run under inference mode (execute)
            native = self.graphs is None and self.device.type == "cpu" and dec is not None and dec.usable_paged(self.cache)
        self.cpu_decoder = dec if native else None
        self.native_steps = 0  # steps run that way (for tests and logs)
        self.adapters = None  # ServedAdapters (hearth/engine/lora.py), set by the engine when it serves any
        self.native_lora = False  # whether the native CPU step holds the adapters too

    def _slots(self, table: list[int], start: int, end: int) -> np.ndarray:
        pos = np.arange(start, end)
        return np.asarray(table, dtype=np.int64)[pos // self.block_size] * self.block_size + pos % self.block_size

    @torch.inference_mode()
    def execute(self, plan: SchedulerOutput, want_all: list[bool]) -> StepResult:
        scheduled = plan.scheduled
        lora = self.adapters is not None and any(s.seq.adapter for s in scheduled)
        if lora and not self.native_lora:
            return self._execute_eager(plan, want_all)  # the fast paths hold the base weights only
        all_decode = (bool(scheduled) and not any(want_all)
                      and all(s.num_tokens == 1 and s.seq.num_computed > 0 and s.samples for s in scheduled))
        if all_decode and self.cpu_decoder is not None and self.cpu_decoder.usable_paged(self.cache):
            return self._execute_native(scheduled)
        if lora:
            return self._execute_eager(plan, want_all)  # CUDA graphs hold the base weights only
        if all_decode and self.graphs is not None:
            seqs = [s.seq for s in scheduled]
            logits, greedy = self.graphs.run([q.token_ids[q.num_computed] for q in seqs],
                                             [q.num_computed for q in seqs], [q.block_table for q in seqs])
            rows = list(range(len(seqs)))
            return StepResult(logits, greedy.tolist(), rows, [None] * len(seqs))
        return self._execute_eager(plan, want_all)

    def _execute_native(self, scheduled) -> StepResult:
        seqs = [s.seq for s in scheduled]
        n = len(seqs)
        tokens = np.fromiter((q.token_ids[q.num_computed] for q in seqs), dtype=np.int64, count=n)
        positions = np.fromiter((q.num_computed for q in seqs), dtype=np.int64, count=n)
        width = max(len(q.block_table) for q in seqs)
        tables = _padded_tables([q.block_table for q in seqs], n, width, self.scratch_block)
        adapters = None
        if self.native_lora and any(q.adapter for q in seqs):
            adapters = torch.tensor([q.adapter for q in seqs], dtype=torch.long)
        logits = self.cpu_decoder.paged(self.model, torch.from_numpy(tokens), torch.from_numpy(positions), self.cache,
                                        torch.from_numpy(tables), adapters)
        self.native_steps += 1
        return StepResult(logits, logits.argmax(-1).tolist(), list(range(n)), [None] * n)

    def _execute_eager(self, plan: SchedulerOutput, want_all: list[bool]) -> StepResult:
        tokens, positions, slots = [], [], []
        decode_rows, decode_slots, prefills = [], [], []
        logit_rows: list[int] = []
        row = 0
        spans = []
        row_adapters = []  # (first row, rows, adapter index) per sequence, for served LoRA adapters
        for s, all_rows in zip(plan.scheduled, want_all):
            seq, n = s.seq, s.num_tokens
            row_adapters.append((row, n, seq.adapter))
            start, end = seq.num_computed, seq.num_computed + n
            tokens.extend(seq.token_ids[start:end])
            positions.append(np.arange(start, end))
            slots.append(self._slots(seq.block_table, start, end))
            if n == 1 and start > 0:
                decode_rows.append(row)
                decode_slots.append(self._slots(seq.block_table, 0, end))
            else:
                key_slots = torch.from_numpy(self._slots(seq.block_table, 0, end)).to(self.device)
                prefills.append(PrefillChunk(row, n, key_slots))
            first = len(logit_rows)
            if all_rows:
                logit_rows.extend(range(row, row + n))
            elif s.samples:
                logit_rows.append(row + n - 1)
            spans.append((first, len(logit_rows)))
            row += n
        meta = BatchMeta(
            positions=torch.from_numpy(np.concatenate(positions)).to(self.device),
            slot_mapping=torch.from_numpy(np.concatenate(slots)).to(self.device),
            prefills=prefills,
        )
        if decode_rows:
            longest = max(len(x) for x in decode_slots)
            key_slots = np.zeros((len(decode_rows), longest), dtype=np.int64)
            mask = np.zeros((len(decode_rows), 1, 1, longest), dtype=bool)
            for i, x in enumerate(decode_slots):
                key_slots[i, : len(x)] = x
                mask[i, 0, 0, : len(x)] = True
            meta.decode_rows = torch.tensor(decode_rows, device=self.device)
            meta.decode_key_slots = torch.from_numpy(key_slots).to(self.device)
            meta.decode_key_mask = torch.from_numpy(mask).to(self.device)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        rows = torch.tensor(logit_rows, dtype=torch.long, device=self.device)
        if self.adapters is not None:
            self.adapters.set_rows(row_adapters, self.device)
        try:
            logits = self.model.forward_paged(ids, self.cache, meta, rows)
        finally:
            if self.adapters is not None:
                self.adapters.clear()
        greedy = logits.argmax(-1).tolist() if logit_rows else []
        last, alls = [], []
        for s, all_rows, (a, b) in zip(plan.scheduled, want_all, spans):
            alls.append((a, b) if all_rows else None)
            last.append(b - 1 if s.samples and b > a else None)
        return StepResult(logits, greedy, last, alls)
