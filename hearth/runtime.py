"""Process-level settings for running a model on the CPU.

`return_large_frees()`: glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB), so
after the first few, the prefill's per-layer activations (1-7 MB each: a 512-token chunk of fp32 rows) are carved out
of the heap and per-thread arenas instead of mapped, and freed ones stay resident — fragmented between longer-lived
blocks, never trimmed. On the default model that held ~38 MiB after a 512-token prefill (figures in bench/README.md;
gguf_mm reuses its own scratch, so the mapping costs prefill little). A fixed threshold maps every block of 256 KiB and up and unmaps it on free.
Decode steps allocate below it (one row of activations; the logits of one token, 192 KiB), so they are unaffected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger("hearth")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 256 * 1024


@functools.cache
def return_large_frees() -> bool:
    """Fix glibc's mmap threshold at 256 KiB for this process (once); False where that is not glibc, or where the
    user set MALLOC_MMAP_THRESHOLD_ themselves (their choice stands)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    log.debug("malloc mmap threshold fixed at %d bytes: %s", MMAP_THRESHOLD, ok)
    return ok
