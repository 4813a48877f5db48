"""The `hearth` command line, run as a real subprocess: help, the happy paths and the interactive chat.

Each happy-path process loads the 135M default model (seconds on 2 cores), so there are only a few,
started together by one module fixture.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

TIMEOUT = 300
SCRIPT = Path(sys.executable).with_name("hearth")
OPTIONS = ["--max-tokens", "--temperature", "--top-p", "--top-k", "--min-p", "--repeat-penalty", "--seed", "--stop", "--device", "--dtype", "--json"]


def cli_cmd(script: bool = False) -> list[str]:
    if script:
        assert SCRIPT.exists(), f"console script missing: {SCRIPT}"
        return [str(SCRIPT)]
    return [sys.executable, "-m", "hearth.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    # The model-loading processes run two at a time on a 2-core machine: one thread each.
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)


def run_cli(*args: str, stdin: str = "", script: bool = False, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_cmd(script) + list(args), input=stdin, capture_output=True, text=True, timeout=timeout, env=cli_env(),
    )


def no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr, r.stderr


# ---------------------------------------------------------------- help (fast: no torch import)


def test_top_level_help():
    r = run_cli("--help", script=True)
    assert r.returncode == 0, r.stderr
    no_traceback(r)
    assert "generate" in r.stdout and "run" in r.stdout


def test_no_arguments_shows_help_and_succeeds():
    r = run_cli()
    assert r.returncode == 0, r.stderr
    no_traceback(r)
    out = r.stdout + r.stderr
    assert "Usage:" in out and "generate" in out and "run" in out


@pytest.mark.parametrize("command,extra", [("run", ["--system"]), ("generate", [])])
def test_command_help_lists_options(command, extra):
    r = run_cli(command, "--help")
    assert r.returncode == 0, r.stderr
    no_traceback(r)
    for opt in OPTIONS + extra:
        assert opt in r.stdout, f"{opt} missing from `hearth {command} --help`"


# ---------------------------------------------------------------- happy paths (load the model)


HAPPY = {
    "generate_json": (["generate", "smollm2", "The capital of France is", "--temperature", "0", "--max-tokens", "8", "--json"], "", False),
    "run_prompt": (["run", "smollm2", "Say hi", "--temperature", "0", "--max-tokens", "16"], "", True),
    "run_stdin": (["run", "smollm2", "--temperature", "0", "--max-tokens", "8", "--json"], "What is the capital of France?\n", False),
    "generate_cut": (["generate", "smollm2", "Once upon a time", "--temperature", "0", "--max-tokens", "4"], "", False),
}


@pytest.fixture(scope="module")
def happy():
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {k: pool.submit(run_cli, *args, stdin=stdin, script=script) for k, (args, stdin, script) in HAPPY.items()}
    futures["chat_on_pty"] = pool.submit(chat_on_pty)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def test_generate_json_knows_paris(happy):
    r = happy["generate_json"].result()
    assert r.returncode == 0, r.stderr
    no_traceback(r)
    out = json.loads(r.stdout)
    assert set(out) >= {"prompt_token_ids", "token_ids", "text", "finish_reason"}
    assert len(out["prompt_token_ids"]) > 0
    assert 1 <= len(out["token_ids"]) <= 8
    assert all(isinstance(i, int) for i in out["token_ids"])
    assert out["finish_reason"] in ("length", "stop")
    assert "Paris" in out["text"]


def test_run_with_prompt_answers_and_exits(happy):
    r = happy["run_prompt"].result()
    assert r.returncode == 0, r.stderr
    no_traceback(r)
    assert r.stdout.strip()
    assert ">>>" not in r.stdout  # no interactive loop
    assert "chatting with" not in r.stderr


def test_an_answer_cut_by_the_token_limit_says_so_on_stderr(happy):
    r = happy["generate_cut"].result()
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "stopped at --max-tokens 4" in r.stderr and "stopped" not in r.stdout


def test_run_reads_prompt_from_stdin_pipe(happy):
    r = happy["run_stdin"].result()
    assert r.returncode == 0, r.stderr
    no_traceback(r)
    out = json.loads(r.stdout)
    assert out["text"].strip()
    assert 1 <= len(out["token_ids"]) <= 8
    # the chat template wrapped the piped question: the prompt is longer than the question alone
    assert len(out["prompt_token_ids"]) > 10
    assert "chatting with" not in r.stderr


# ---------------------------------------------------------------- interactive chat on a pseudo-terminal


class Pty:
    def __init__(self, args: list[str]):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     env=cli_env(TERM="dumb", NO_COLOR="1"))
        os.close(slave)
        self.buf = b""

    def read_until(self, marker: bytes, deadline: float, count: int = 1) -> bytes:
        while self.buf.count(marker) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {marker!r}; got:\n{self.buf.decode(errors='replace')}")
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    if self.proc.poll() is not None:
                        raise AssertionError(f"exited ({self.proc.returncode}) before {marker!r}:\n{self.buf.decode(errors='replace')}")
                    time.sleep(0.05)
                self.buf += chunk
        return self.buf

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def drain(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.buf += chunk

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


QUESTION = "What is the capital of France?"


def chat_on_pty() -> tuple[int, str]:
    """`hearth run smollm2` on a terminal: ask one question, /clear, /bye. Returns (exit code, transcript)."""
    deadline = time.monotonic() + TIMEOUT
    t = Pty(cli_cmd(script=True) + ["run", "smollm2", "--temperature", "0", "--max-tokens", "8"])
    try:
        t.read_until(b">>> ", deadline)
        t.send(QUESTION)
        t.read_until(b">>> ", deadline, count=2)
        t.send("/clear")
        t.read_until(b"(conversation cleared)", deadline)
        t.send("/bye")
        rc = t.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        t.drain(time.monotonic() + 2)
    finally:
        t.close()
    return rc, t.buf.decode(errors="replace")


def test_interactive_chat_loop(happy):
    rc, text = happy["chat_on_pty"].result()
    assert rc == 0, text
    assert "chatting with" in text
    assert "Traceback" not in text and "error:" not in text, text
    answer = text.split(QUESTION, 1)[1].split(">>> ", 1)[0]
    assert answer.strip(), text
