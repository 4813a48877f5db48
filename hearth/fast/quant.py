"""Linear and embedding layers that keep GGUF Q4_0 / Q4_1 / Q8_0 (and F16) weights in their stored format.

They are drop-in replacements for `nn.Linear` / `nn.Embedding` in the Llama modules: the loader swaps them in
for tensors stored in those types when hearth's native CPU kernels are available (hearth/kernels), so a 4-bit
file runs in 4 bits, straight from the memory map. Products follow llama.cpp's arithmetic: each activation row is
quantized to 8 bits in blocks of 32 and multiplied with integer dot products; the result does not depend on how
many rows are in the batch, so a request gives the same tokens alone or batched. F16 weights (GGML type 1) are
held the same way, as uint8 rows of fp16 values: activations are rounded to fp16 as ggml does, products in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hearth.weights.types import QuantizedTensor


class GGUFLinear(nn.Module):
    """y = x @ W.T with W in a GGUF block format or F16 (no bias: Llama has none).

    Several weights of one type can sit side by side (`fuse`): q|k|v or gate|up then cost one call and one
    quantization of x, and the memory-mapped blocks are not copied into one tensor.
    """

    def __init__(self, qs: QuantizedTensor | list[QuantizedTensor], ops):
        super().__init__()
        qs = [qs] if isinstance(qs, QuantizedTensor) else list(qs)
        if len({q.type_id for q in qs}) != 1 or len({q.shape[1] for q in qs}) != 1:
            raise ValueError("fused GGUF weights must share their type and input width")
        self.parts = qs
        for i, q in enumerate(qs):
            self.register_buffer(f"qweight{i}", q.data, persistent=False)
        self.qtype, self.type_name = qs[0].type_id, qs[0].type_name
        self.in_features = qs[0].shape[1]
        self.out_features = sum(q.shape[0] for q in qs)
        self._ops = ops
        self._ws = self.qweights  # the block tensors, as the kernel takes them

    @property
    def qweights(self) -> list[Tensor]:
        return [getattr(self, f"qweight{i}") for i in range(len(self.parts))]

    def forward(self, x: Tensor) -> Tensor:
        # (a decode step makes ~90 of these calls: the common 2-D fp32 case skips every reshape and cast)
        if x.dim() == 2 and x.dtype == torch.float32:
            return self._ops.gguf_mm(x, self._ws, self.qtype)
        y = self._ops.gguf_mm(x.reshape(-1, self.in_features), self._ws, self.qtype)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def _apply(self, fn, recurse=True):  # .to()/.cpu() replace buffers: refresh the cached list with them
        out = super()._apply(fn, recurse)
        self._ws = self.qweights
        return out

    def dequantized(self) -> Tensor:
        """The weight as fp32 (out_features, in_features), bit-identical to ggml's dequantization."""
        return torch.cat([self._ops.gguf_dequant(w, self.qtype, self.in_features) for w in self.qweights])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, type={self.type_name}"


class GGUFEmbedding(nn.Module):
    """Token embedding rows dequantized on lookup (only the rows asked for)."""

    def __init__(self, q: QuantizedTensor, ops, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("qweight", q.data, persistent=False)
        self.qtype, self.type_name = q.type_id, q.type_name
        self.num_embeddings, self.embedding_dim = q.shape
        self.quantized = q  # a tied output layer reads the same blocks
        self.dtype = dtype
        self._ops = ops

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.qweight.index_select(0, ids.reshape(-1))
        out = self._ops.gguf_dequant(rows, self.qtype, self.embedding_dim)
        return out.view(*ids.shape, self.embedding_dim).to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, type={self.type_name}"


def fuse_linears(mods: list[nn.Module]) -> nn.Module | None:
    """One module computing cat([m(x) for m in mods], -1), or None when they cannot be fused (mixed types)."""
    if all(isinstance(m, GGUFLinear) for m in mods):
        if len({m.qtype for m in mods}) != 1:
            return None
        return GGUFLinear([p for m in mods for p in m.parts], mods[0]._ops)
    if all(type(m) is nn.Linear and m.bias is None for m in mods):
        w = torch.cat([m.weight.detach() for m in mods])
        fused = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
        fused.weight = nn.Parameter(w, requires_grad=False)
        return fused
    return None
