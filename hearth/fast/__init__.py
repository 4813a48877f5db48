"""Speed-ups applied to the plain model (hearth/model) from outside, chosen by the loader or the engine.

  quant.py          GGUFLinear / GGUFEmbedding: GGUF block (and F16) weights kept as stored, multiplied by
                    hearth's CPU kernels; fuse_linears
  modules.py        apply_fast_path(model, ops): module swaps (q|k|v and gate|up fused, fused CPU glue kernels)
  cpu_decode.py     CPUDecoder: a whole one-token step in one native call (GGUF weights on the CPU)
  gpu_decode.py     GPUDecoder: a batch-1 bf16/fp16 step as bound Triton launches
  static_decode.py  StaticDecoder: the fixed-shape step, recorded as a CUDA graph (optionally compiled)

The loader applies the fast path and builds the CPU decoder (`LoadedModel.decoder`); the Generator and the engine's
ModelRunner take that decoder as a parameter and hand it the steps it can run. The model imports nothing from here.
"""

from hearth.fast.cpu_decode import CPUDecoder
from hearth.fast.modules import apply_fast_path

__all__ = ["CPUDecoder", "apply_fast_path"]
