"""QLoRA's frozen base: NF4 4-bit weights (Dettmers et al. 2023), dequantized on the fly in each forward.

NF4 places its 16 levels at the quantiles of a standard normal, which suits normally distributed
weights better than evenly spaced int4. Each block of 64 weights keeps one fp32 absmax scale
(4.5 bits per weight in all; no double quantization). Gradients flow through to the input, never
into the codes: the base is frozen and only the LoRA adapters on top of it train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hearth.errors import HearthError

# The NF4 code book, as in the QLoRA paper and bitsandbytes.
NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])
BLOCK = 64


def quantize_nf4(w: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor]:
    """(out, in) float weight → (packed uint8 codes (numel/2,), fp32 absmax per block)."""
    if w.numel() % block or w.numel() % 2:
        raise HearthError(f"a weight of {w.numel()} elements does not split into NF4 blocks of {block}")
    blocks = w.detach().float().reshape(-1, block)
    scale = blocks.abs().amax(dim=1).clamp_min(1e-12)
    normed = blocks / scale[:, None]
    mids = (NF4[1:] + NF4[:-1]) / 2  # nearest level = number of midpoints below the value
    codes = torch.bucketize(normed, mids.to(normed.device)).to(torch.uint8).reshape(-1)
    return (codes[0::2] << 4) | codes[1::2], scale


def dequantize_nf4(packed: Tensor, scale: Tensor, shape: tuple[int, int], dtype: torch.dtype, block: int = BLOCK) -> Tensor:
    codes = torch.stack(((packed >> 4) & 0xF, packed & 0xF), dim=1).reshape(-1).long()
    levels = NF4.to(packed.device)[codes].reshape(-1, block) * scale[:, None]
    return levels.reshape(shape).to(dtype)


class NF4Linear(nn.Module):
    """A frozen, bias-free linear whose weight lives as NF4 codes; `forward` dequantizes then matmuls."""

    def __init__(self, weight: Tensor, compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.compute_dtype = compute_dtype or (weight.dtype if weight.dtype.is_floating_point else torch.float32)
        packed, scale = quantize_nf4(weight)
        self.register_buffer("packed", packed)
        self.register_buffer("scale", scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype | None = None) -> "NF4Linear":
        if linear.bias is not None:
            raise HearthError("NF4Linear supports bias-free linears only (Llama has no projection biases)")
        return cls(linear.weight, compute_dtype)

    def dequantize(self) -> Tensor:
        return dequantize_nf4(self.packed, self.scale, (self.out_features, self.in_features), self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantize().to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nf4 block={BLOCK}"


def quantize_blocks(model: nn.Module, compute_dtype: torch.dtype | None = None) -> int:
    """Swap every projection of every block for an NF4Linear (embeddings, norms and the output head stay
    as they are). Returns the bytes saved."""
    saved = 0
    for block in model.layers:
        for parent in (block.attention, block.feed_forward):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    q = NF4Linear.from_linear(child, compute_dtype)
                    saved += child.weight.numel() * child.weight.element_size() - q.packed.numel() - 4 * q.scale.numel()
                    setattr(parent, name, q)
    return saved
