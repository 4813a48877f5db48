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


# ---------------------------------------------------------------------------------------------- threads


def default_threads(cores: int, load: float, online: int | None = None) -> int:
    """CPU threads to use when the user named none: one per core this process may run on, less one for each core
    that other processes keep busy (`load`: the machine's 1-minute load average, read at start, before this process
    has added to it; scaled to this process's share when its affinity allows only `cores` of the `online` CPUs).

    Why back off: hearth's native decode step and torch's kernels split each step over their threads and meet at
    barriers; a thread whose core another process holds makes every other thread wait at each one (4-30x slower on
    a shared machine), while one fewer thread costs at most that thread's share."""
    cores = max(1, int(cores))
    if online and online > cores:
        load = load * cores / online
    busy = int(max(0.0, load) + 0.5)  # round half up: a load of 0.5 is a core half taken
    return max(1, cores - busy)


def machine_load() -> tuple[int, float, int]:
    """(CPUs this process may run on, the 1-minute load average, CPUs online): what default_threads reads."""
    online = os.cpu_count() or 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = online
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows)
        load = 0.0
    return cores, load, online
