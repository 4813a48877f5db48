"""Turns a scheduler plan into tensors, runs the model once, returns the logits that are needed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hearth.engine.scheduler import SchedulerOutput
from hearth.model import Transformer
from hearth.model.paged import BatchMeta, PagedKVCache, PrefillChunk


@dataclass
class StepResult:
    """Logits rows per scheduled sequence (same order as plan.scheduled).

    `last` is the row that predicts the next token (None when the sequence is mid-prefill);
    `all` holds every row of the chunk (only for sequences that asked for prompt logprobs).
    """

    last: list[Tensor | None]
    all: list[Tensor | None]


class ModelRunner:
    def __init__(self, model: Transformer, num_blocks: int, block_size: int):
        self.model = model
        self.block_size = block_size
        self.device = model.device
        self.cache = PagedKVCache(model.config, num_blocks, block_size, model.device, model.dtype)

    def _slots(self, table: list[int], start: int, end: int) -> Tensor:
        pos = torch.arange(start, end)
        blocks = torch.tensor(table, dtype=torch.long)[pos // self.block_size]
        return blocks * self.block_size + pos % self.block_size

    @torch.inference_mode()
    def execute(self, plan: SchedulerOutput, want_all: list[bool]) -> StepResult:
        tokens, positions, slots = [], [], []
        decode_rows, decode_slots, prefills = [], [], []
        logit_rows: list[int] = []
        row = 0
        spans = []
        for s, all_rows in zip(plan.scheduled, want_all):
            seq, n = s.seq, s.num_tokens
            start, end = seq.num_computed, seq.num_computed + n
            tokens.extend(seq.token_ids[start:end])
            positions.append(torch.arange(start, end))
            slots.append(self._slots(seq.block_table, start, end))
            if n == 1 and start > 0:
                decode_rows.append(row)
                decode_slots.append(self._slots(seq.block_table, 0, end))
            else:
                prefills.append(PrefillChunk(row, n, self._slots(seq.block_table, 0, end).to(self.device)))
            first = len(logit_rows)
            if all_rows:
                logit_rows.extend(range(row, row + n))
            elif s.samples:
                logit_rows.append(row + n - 1)
            spans.append((first, len(logit_rows)))
            row += n
        meta = BatchMeta(
            positions=torch.cat(positions).to(self.device),
            slot_mapping=torch.cat(slots).to(self.device),
            prefills=prefills,
        )
        if decode_rows:
            longest = max(len(x) for x in decode_slots)
            key_slots = torch.zeros(len(decode_rows), longest, dtype=torch.long)
            mask = torch.zeros(len(decode_rows), 1, 1, longest, dtype=torch.bool)
            for i, x in enumerate(decode_slots):
                key_slots[i, : len(x)] = x
                mask[i, 0, 0, : len(x)] = True
            meta.decode_rows = torch.tensor(decode_rows, device=self.device)
            meta.decode_key_slots = key_slots.to(self.device)
            meta.decode_key_mask = mask.to(self.device)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        logits = self.model.forward_paged(ids, self.cache, meta, torch.tensor(logit_rows, dtype=torch.long, device=self.device))
        logits = logits.cpu()
        last, alls = [], []
        for s, all_rows, (a, b) in zip(plan.scheduled, want_all, spans):
            chunk = logits[a:b]
            alls.append(chunk if all_rows else None)
            last.append(chunk[-1] if s.samples and b > a else None)
        return StepResult(last, alls)
