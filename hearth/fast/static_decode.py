"""Decoding from a preallocated cache with a fixed-shape step: CUDA graphs and torch.compile on the GPU.

At batch 1 a GPU decode step is a few hundred small kernels; launched one by one from Python they take far longer
than reading the weights does. The step here has fixed shapes (the position is a device tensor and attention
runs over the whole preallocated cache under a mask), so it is recorded once as a CUDA graph and each further
token is one `replay()`: no Python per layer, no host-device sync. Optionally the step is first compiled with
torch.compile, which fuses the element-wise work (norms, RoPE, SwiGLU) into a few kernels per layer.

The plain path (`Transformer.forward` with an int position, `hearth.engine.generate`) stays the reference;
tests check this one against it (tests/test_static_decode.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hearth.model.llama import Transformer


def cache_bucket(n: int, minimum: int = 256) -> int:
    """Cache length for `n` tokens: the next power of two (≥ minimum), so few distinct shapes are ever captured."""
    size = minimum
    while size < n:
        size *= 2
    return size


class StaticDecoder:
    """B sequences that advance together: `prefill(ids)` then `step(tokens)` once per new token.

    graphs: record the step as a CUDA graph (default: on CUDA). compile: torch.compile the step first (fuses the
    small ops; costs tens of seconds once per shape). kernels: run the step as hearth's Triton kernels
    (hearth/fast/gpu_decode.py; default: where they apply — CUDA, batch 1, bf16/fp16 — unless compile is asked
    for; False turns them off). pdl: the kernels' programmatic dependent launch (None: on Hopper and later). On the
    CPU none of these applies and the step runs as is.
    """

    def __init__(self, model: Transformer, batch_size: int = 1, max_seq_len: int | None = None,
                 graphs: bool | None = None, compile: bool = False, kernels: bool | None = None,
                 pdl: bool | None = None):
        self.model = model
        self.max_seq_len = max_seq_len or model.config.max_seq_len
        self.cache = model.new_cache(batch_size, self.max_seq_len)
        dev = model.device
        self.graphs = dev.type == "cuda" if graphs is None else graphs
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.length = 0  # host-side copy of the position, for bounds checks
        from hearth.fast.gpu_decode import GPUDecoder

        if kernels is None:
            kernels = not compile and GPUDecoder.usable(model, batch_size, self.cache)
        elif kernels and not GPUDecoder.usable(model, batch_size, self.cache):
            raise ValueError("hearth's GPU kernels need CUDA, batch 1, bf16/fp16 weights fused by apply_fast_path and Triton")
        self.kernels = kernels
        if kernels:
            gpu = GPUDecoder(model, self.cache, self.tokens, self.pos, pdl=pdl)
            self._fn = lambda tokens, pos: gpu.step()
        else:
            self._fn = torch.compile(self._decode, fullgraph=True, dynamic=False) if compile else self._decode
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: Tensor | None = None

    def _decode(self, tokens: Tensor, pos: Tensor) -> Tensor:
        return self.model(tokens, pos, self.cache)[:, -1]

    @torch.inference_mode()
    def prefill(self, ids: Tensor) -> Tensor:
        """ids (B, T) from an empty cache → logits (B, vocab) fp32 of the last position."""
        if ids.shape[1] >= self.max_seq_len:
            raise ValueError(f"prompt of {ids.shape[1]} tokens leaves no room in a cache of {self.max_seq_len}")
        logits = self.model(ids, 0, self.cache, last_only=True)[:, -1]
        self.length = ids.shape[1]
        self.pos.fill_(self.length)
        return logits

    @torch.inference_mode()
    def step(self, tokens: Tensor) -> Tensor:
        """tokens (B, 1) at the current position → logits (B, vocab) fp32; the position advances by one.

        The returned tensor is the graph's output buffer: the next step overwrites it."""
        if self.length >= self.max_seq_len:
            raise ValueError(f"the cache of {self.max_seq_len} tokens is full")
        self.tokens.copy_(tokens)
        if self.graphs:
            if self._graph is None:
                self._capture()
            self._graph.replay()
            out = self._out
        else:
            out = self._fn(self.tokens, self.pos)
        self.pos.add_(1)
        self.length += 1
        return out

    def _capture(self) -> None:
        # The warm-up writes this position's K/V from the same token the real step writes, so it leaves the cache as
        # the step would.
        self._graph, self._out = record_graph(lambda: self._fn(self.tokens, self.pos), warmup=2)


def record_graph(fn, warmup: int = 1, pool=None):
    """Run `fn` `warmup` times on a side stream (compiles, lets cuBLAS pick its kernels), then record it as a CUDA
    graph; returns (graph, fn's output tensors, which every replay overwrites)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out
