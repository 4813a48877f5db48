"""A real `hearth serve` subprocess for tests that talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

MODEL = "smollm2"
STARTUP_TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, tmp: Path, name: str, *extra: str, threads: int | None = None, model: str = MODEL,
                 env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{name}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        env.pop("HEARTH_API_KEY", None)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hearth.cli", "serve", model, "--port", str(self.port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited early:\n{self.log_path.read_text()}"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"server not healthy after {STARTUP_TIMEOUT}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
