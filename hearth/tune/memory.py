"""A pre-flight memory estimate: refuse a run that would not fit before spending any time on it.

The estimate is deliberately simple and on the generous side: optimizer state, gradients and the
largest micro-batch's activations (fp32-sized unless the model computes in a 2-byte dtype), against
what the device has free now (the model is already loaded by then).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hearth.errors import HearthError

GiB = 1024**3


@dataclass
class MemoryEstimate:
    trainable: int  # bytes: weights + gradients + AdamW moments of the trainable parameters
    activations: int  # bytes: one micro-batch's saved activations and logits
    available: int  # bytes free on the device

    @property
    def needed(self) -> int:
        return int((self.trainable + self.activations) * 1.2)  # allocator slack and temporaries


def available_bytes(device: torch.device) -> int:
    """Free memory: CUDA's free bytes, or MemAvailable (and the cgroup limit, when lower) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = min(avail or 1 << 62, int(limit) - used)
    except (OSError, ValueError):
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return avail


def estimate(model, batch_size: int, max_len: int, grad_checkpointing: bool, device: torch.device,
             extra_models: int = 0) -> MemoryEstimate:
    cfg = model.config
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    trainable_bytes = trainable * 4  # weights, gradients, two AdamW moments (same dtype)
    act_bytes = 2 if next(model.parameters()).dtype in (torch.bfloat16, torch.float16) else 4
    kv = cfg.n_kv_heads * cfg.head_dim
    tokens = batch_size * max_len
    per_token_layer = 10 * cfg.dim + 4 * cfg.hidden_dim + 4 * kv + cfg.n_heads * max_len  # incl. attention scores
    if grad_checkpointing:
        acts = tokens * (cfg.n_layers * cfg.dim + per_token_layer) * act_bytes
    else:
        acts = tokens * cfg.n_layers * per_token_layer * act_bytes
    acts += tokens * cfg.vocab_size * 4 * 3 * (1 + extra_models)  # logits, log-softmax, their gradient
    return MemoryEstimate(trainable_bytes, acts, available_bytes(device))


def check_memory(est: MemoryEstimate, limit_bytes: int | None = None) -> None:
    """Raise a one-line HearthError when the estimate exceeds what is free (or the user's limit)."""
    free = est.available if limit_bytes is None else min(est.available, limit_bytes)
    if est.needed > free:
        raise HearthError(
            f"training would need about {est.needed / GiB:.2f} GiB (optimizer {est.trainable / GiB:.2f}, activations "
            f"{est.activations / GiB:.2f}) but only {free / GiB:.2f} GiB is free; lower --batch-size or --max-len, "
            "use --grad-checkpointing, or --method lora/qlora"
        )
