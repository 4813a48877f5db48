"""Native kernels, compiled on first use and cached.

`gguf_cpu.cpp` multiplies by GGUF Q4_0/Q4_1/Q8_0 and F16 weights in place on x86 CPUs with AVX2 (see the file for
why it is hand-written); it also holds the fp32 glue of the fast path and `torch.classes.hearth.DecodePlan`, a whole
one-token step in one call (hearth/fast/cpu_decode.py). It is built with PyTorch's C++-extension machinery the
first time it is needed (~1 min on two cores) into ``$HEARTH_HOME/kernels`` (default ``~/.cache/hearth/kernels``)
keyed by the source hash, so later processes load it in milliseconds. Where it cannot be built (no AVX2, no
compiler), `gguf_ops()` returns None and callers fall back to dequantized weights; `load(..., kernels=False)`
(the CLI's ``HEARTH_NO_KERNELS=1``) forces that path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

import torch

from hearth.fsutil import atomic_write

log = logging.getLogger(__name__)

_SRC = Path(__file__).with_name("gguf_cpu.cpp")
# GGML type ids the kernel reads natively (F16: fp16 rows, activations rounded to fp16 as ggml does)
NATIVE_TYPES = {1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
# OpenMP so at::parallel_for uses torch's thread pool (libgomp.so.1 is already loaded by torch, so no second runtime
# is started)
_CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fno-math-errno", "-fopenmp")
_DONE = "BUILT"  # marker file: the build directory holds a complete library


def _cpu_has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f in flags.split() or f" {f} " in flags for f in ("avx2", "fma", "f16c"))


def cache_dir() -> Path:
    home = os.environ.get("HEARTH_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hearth", "kernels"
    )
    return Path(home)


@functools.cache
def gguf_ops():
    """torch.ops.hearth with gguf_mm / gguf_dequant, or None when the native kernels are unavailable here."""
    if not _cpu_has_avx2():
        return None
    digest = hashlib.sha256(_SRC.read_bytes() + torch.__version__.encode() + " ".join(_CFLAGS).encode()).hexdigest()[:16]
    build = cache_dir() / f"gguf_cpu-{digest}"
    built = build / "hearth_gguf_cpu.so"
    if built.exists() and (build / _DONE).exists():
        # Built before: load it directly. torch's cpp_extension.load would do the same after importing setuptools
        # and running ninja to find nothing to do (~0.3 s and ~10 MiB of modules at every start).
        try:
            torch.ops.load_library(str(built))
            _register_fakes()
            return torch.ops.hearth
        except Exception as e:  # a damaged file: rebuild it below
            log.warning("the cached kernels %s do not load (%s); rebuilding", built, str(e)[:200])
            (build / _DONE).unlink(missing_ok=True)
    build.mkdir(parents=True, exist_ok=True)
    try:
        from torch.utils.cpp_extension import load

        if not any(build.glob("*.so")):
            log.warning("compiling hearth's quantized CPU kernels (once, about a minute)")
        # build from a copy inside the build directory: ninja rebuilds whenever the source *path* changes, so
        # building from each checkout's own path would recompile on every switch between checkouts
        src = build / _SRC.name
        if not src.exists() or src.read_bytes() != _SRC.read_bytes():
            atomic_write(src, _SRC.read_bytes(), durable=False)
        load(
            name="hearth_gguf_cpu",
            sources=[str(src)],
            build_directory=str(build),
            extra_cflags=list(_CFLAGS),
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
        (build / _DONE).touch()  # written after a complete build only (see the fast path above)
    except Exception as e:  # no compiler, no ninja, headers missing: run on dequantized weights instead
        log.warning("hearth's quantized CPU kernels are unavailable (%s); using dequantized weights", str(e)[:200])
        return None
    _register_fakes()
    return torch.ops.hearth


def _register_fakes() -> None:
    """Shape functions so torch.compile can trace through the custom ops."""

    @torch.library.register_fake("hearth::gguf_mm")
    def _(x, ws, qtype):
        return x.new_empty((x.shape[0], sum(w.shape[0] for w in ws)), dtype=torch.float32)

    @torch.library.register_fake("hearth::gguf_dequant")
    def _(w, qtype, cols):
        return w.new_empty((w.shape[0], cols), dtype=torch.float32)
