"""--threads and the default that backs off on a busy machine (issue 24, item 14): the policy as a pure function of
cores and load, apply_threads setting torch's pool (which threads started later, like the server's engine thread,
inherit), and the native decode step starting no more OpenMP workers than asked for."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from hearth import runtime
from hearth.cli.options import apply_threads
from hearth.runtime import default_threads

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cores, load, online, want", [
    (2, 0.0, None, 2),     # idle: one thread per core
    (2, 0.4, None, 2),     # a little background noise does not count
    (2, 0.5, None, 1),     # half a core taken rounds up
    (2, 1.8, None, 1),     # the shared 2-core machine of the report: one thread
    (2, 7.0, None, 1),     # never below one
    (16, 0.3, None, 16),
    (16, 4.4, None, 12),
    (2, 32.0, 64, 1),      # affinity to 2 of 64 CPUs: our share of a load of 32 is 1
    (8, 3.0, 64, 8),       # ... and of a load of 3, nothing
    (4, -1.0, None, 4),    # a nonsense load is no load
])
def test_default_threads_policy(cores, load, online, want):
    assert default_threads(cores, load, online) == want


def test_machine_load_reads_this_machine():
    cores, load, online = runtime.machine_load()
    assert 1 <= cores <= online and load >= 0.0


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_apply_threads_sets_the_pool_that_later_threads_inherit(restore_threads):
    assert apply_threads(1) == 1 and torch.get_num_threads() == 1
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # as the server's engine thread
    t.start()
    t.join()
    assert seen == [1]


def test_default_backs_off_and_says_so(restore_threads, monkeypatch, caplog):
    torch.set_num_threads(2)
    monkeypatch.setattr(runtime, "machine_load", lambda: (2, 1.8, 2))
    with caplog.at_level(logging.INFO, logger="hearth"):
        assert apply_threads(None, env={}) == 1
    assert torch.get_num_threads() == 1
    assert "machine busy (load 1.8): using 1 thread of 2; --threads to override" in caplog.text
    caplog.clear()
    torch.set_num_threads(2)
    monkeypatch.setattr(runtime, "machine_load", lambda: (2, 0.1, 2))
    with caplog.at_level(logging.INFO, logger="hearth"):
        assert apply_threads(None, env={}) == 2  # idle: torch's own default, nothing said
    assert caplog.text == ""
    torch.set_num_threads(2)
    monkeypatch.setattr(runtime, "machine_load", lambda: (2, 1.8, 2))
    assert apply_threads(None, env={"OMP_NUM_THREADS": "2"}) == 2  # the user's OMP_NUM_THREADS stands


PROBE = """
import os, sys, threading
from hearth.cli.options import apply_threads
apply_threads(int(sys.argv[1]))
from hearth.engine.generate import Generator
from hearth.engine.sampling import SamplingParams
from hearth.loader import load
lm = load("smollm2")
assert lm.decoder is not None, "the native decode step did not apply"
def work():
    gen = Generator(lm.model, lm.tokenizer, decoder=lm.decoder)
    gen.complete(lm.tokenizer.encode("Hello"), SamplingParams(max_tokens=3, temperature=0.0))
t = threading.Thread(target=work)  # decode off the main thread, as the server's engine does
t.start()
t.join()
print(len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
def test_native_decode_step_starts_no_more_workers_than_asked(tmp_path):
    """With --threads 1 the whole-model native step runs on the calling thread: no OpenMP workers appear; with 2 they
    do. (A decode step that read OpenMP's own default instead would start them either way.)"""
    counts = {}
    for n in (1, 2):
        r = subprocess.run([sys.executable, "-c", PROBE, str(n)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "HEARTH_HOME": str(tmp_path)})
        assert r.returncode == 0, r.stderr
        counts[n] = int(r.stdout.strip().splitlines()[-1])
    assert counts[1] < counts[2], counts


def test_threads_option_on_every_model_command(capsys):
    from hearth.cli import main

    for command in ("run", "generate", "serve", "perplexity", "eval", "quantize"):
        assert main([command, "--help"]) == 0
        assert "--threads" in capsys.readouterr().out, command
