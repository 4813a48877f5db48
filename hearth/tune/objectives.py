"""What one micro-batch costs: supervised fine-tuning, DPO and distillation losses.

Each objective turns a micro-batch's rows into a *summed* loss and says how many units it sums over
(`count`), so the loop can divide by the units of the whole accumulated step before backward: the
gradient is then the same however the step is split into micro-batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hearth.tune.data import IGNORE, PrefPair, collate, eval_batches
from hearth.tune.forward import hidden_states, lm_loss_sum, sequence_logprobs
from hearth.tune.lora import adapters_disabled


class SFT:
    """Cross-entropy on the target tokens (assistant turns / completions)."""

    def __init__(self, device, pad_id: int = 0, packed: bool = False):
        self.device, self.pad_id, self.packed = device, pad_id, packed

    def count(self, rows) -> int:
        return sum(ex.n_targets for row in rows for ex in row)

    def loss(self, model, rows, grad_checkpointing: bool = False) -> tuple[torch.Tensor, int]:
        b = collate(rows, self.packed, self.pad_id).to(self.device)
        loss, _ = lm_loss_sum(model, b.tokens, b.targets, b.doc_ids, grad_checkpointing)
        return loss, b.n_tokens

    @torch.no_grad()
    def eval_loss(self, model, items, batch_size: int) -> float:
        total, n = 0.0, 0
        for b in eval_batches(items, batch_size, self.pad_id):
            b = b.to(self.device)
            loss, k = lm_loss_sum(model, b.tokens, b.targets)
            total, n = total + float(loss), n + k
        return total / max(n, 1)


class DPO:
    """Direct Preference Optimization (Rafailov et al. 2023) against the frozen base (adapters off):

        loss = -log σ(β · [(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])

    Each row is one PrefPair; chosen and rejected run as one batch of 2B sequences.
    """

    def __init__(self, device, beta: float = 0.1, pad_id: int = 0):
        self.device, self.beta, self.pad_id = device, beta, pad_id

    def count(self, rows) -> int:
        return sum(len(row) for row in rows)

    def _scores(self, model, pairs: list[PrefPair], grad_checkpointing: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        b = collate([[p.chosen] for p in pairs] + [[p.rejected] for p in pairs], False, self.pad_id).to(self.device)
        policy = sequence_logprobs(model, b.tokens, b.targets, grad_checkpointing)
        with torch.no_grad(), adapters_disabled(model):
            ref = sequence_logprobs(model, b.tokens, b.targets)
        n = len(pairs)
        margin = (policy[:n] - ref[:n]) - (policy[n:] - ref[n:])
        return margin, policy, b.n_tokens

    def loss(self, model, rows, grad_checkpointing: bool = False) -> tuple[torch.Tensor, int]:
        pairs = [p for row in rows for p in row]
        margin, _, ntok = self._scores(model, pairs, grad_checkpointing)
        return -F.logsigmoid(self.beta * margin).sum(), ntok

    @torch.no_grad()
    def eval_loss(self, model, items, batch_size: int) -> float:
        total = 0.0
        for i in range(0, len(items), batch_size):
            margin, _, _ = self._scores(model, items[i : i + batch_size], False)
            total += float(-F.logsigmoid(self.beta * margin).sum())
        return total / max(len(items), 1)

    @torch.no_grad()
    def reward_accuracy(self, model, items, batch_size: int = 8) -> float:
        """Share of pairs whose implicit reward prefers the chosen answer."""
        right = 0
        for i in range(0, len(items), batch_size):
            margin, _, _ = self._scores(model, items[i : i + batch_size], False)
            right += int((margin > 0).sum())
        return right / max(len(items), 1)


class Distill:
    """Knowledge distillation (Hinton et al. 2015): per target token,

        loss = α · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − α) · CE(student, label)

    The teacher is frozen and runs without gradients; both share the tokenizer (same vocabulary).
    `eval_loss` is the student's plain cross-entropy, comparable with a student trained from scratch.
    """

    def __init__(self, teacher, device, temperature: float = 2.0, alpha: float = 0.5, pad_id: int = 0):
        if temperature <= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError("temperature must be positive and alpha in [0, 1]")
        self.teacher, self.device, self.t, self.alpha, self.pad_id = teacher, device, temperature, alpha, pad_id

    def count(self, rows) -> int:
        return sum(ex.n_targets for row in rows for ex in row)

    def loss(self, model, rows, grad_checkpointing: bool = False) -> tuple[torch.Tensor, int]:
        b = collate(rows, False, self.pad_id).to(self.device)
        sel = b.targets != IGNORE
        s_logits = model.output(hidden_states(model, b.tokens, None, grad_checkpointing)[sel]).float()
        ce = F.cross_entropy(s_logits, b.targets[sel], reduction="sum")
        if self.alpha == 0:  # plain language modelling: the teacher is not consulted
            return ce, b.n_tokens
        with torch.no_grad():
            t_logits = self.teacher.output(hidden_states(self.teacher, b.tokens)[sel]).float()
        kl = F.kl_div(
            F.log_softmax(s_logits / self.t, dim=-1), F.log_softmax(t_logits / self.t, dim=-1),
            log_target=True, reduction="sum",
        )
        return self.alpha * self.t**2 * kl + (1 - self.alpha) * ce, b.n_tokens

    @torch.no_grad()
    def eval_loss(self, model, items, batch_size: int) -> float:
        return SFT(self.device, self.pad_id).eval_loss(model, items, batch_size)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
