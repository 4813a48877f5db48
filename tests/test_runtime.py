"""hearth/runtime.py: freed prefill-sized blocks go back to the OS instead of staying in glibc's heap."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The prefill's pattern: a large block freed (glibc then raises its mmap threshold to its size), then 1 MiB
# activations allocated and freed between small blocks that stay live, so the heap cannot shrink past them.
SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {root!r})
    if sys.argv[1] == "fixed":
        from hearth.runtime import return_large_frees
        assert return_large_frees()
    def anon_mib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) // 1024
    torch.ones(8 << 20, dtype=torch.uint8)
    base = anon_mib()
    keep, big = [], []
    for _ in range(40):
        big.append(torch.ones(1 << 20, dtype=torch.uint8))
        keep.append(torch.ones(64))
    del big
    print(anon_mib() - base)
    """
)

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc malloc only"
)


def _retained_mib(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT)), mode], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    return int(out.stdout.strip())


@linux_glibc
def test_freed_activations_are_returned_to_the_os():
    assert _retained_mib("default") >= 30  # the problem, as glibc behaves by default
    assert _retained_mib("fixed") <= 4


@linux_glibc
def test_user_setting_is_respected(monkeypatch):
    from hearth import runtime

    runtime.return_large_frees.cache_clear()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    try:
        assert runtime.return_large_frees() is False
    finally:
        runtime.return_large_frees.cache_clear()
