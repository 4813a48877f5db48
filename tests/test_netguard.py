"""Never online: hearth refuses every non-loopback connection before a packet leaves, and the whole
pull → run → serve path makes none.

The proof runs children under a recorder: a sitecustomize.py that adds an audit hook on CPython's
`socket.*` events (fired just before the system call) and writes every attempt to a log. The recorder
also refuses non-loopback attempts itself, so even a broken guard sends nothing during the tests.
Deliberate attempts go to 10.255.255.1:9 (unroutable) and example.com:80; none gets past the guard.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hearth import netguard
from hearth.errors import HearthError

TIMEOUT = 300

RECORDER = textwrap.dedent('''
    """Test recorder (not hearth): log every socket attempt of this process; refuse non-loopback ones."""
    import ipaddress, os, socket, sys

    _LOG = os.environ["HEARTH_NET_LOG"]

    def _write(line):
        with open(_LOG, "a") as f:
            f.write(line + "\\n")

    def _local(host, lookup=False):
        if host is None:
            return True
        if isinstance(host, (bytes, bytearray)):
            host = bytes(host).decode("ascii", "replace")
        h = str(host).strip("[]").split("%")[0].lower().rstrip(".")
        if h == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return ip.is_loopback or lookup  # a numeric lookup sends nothing

    def _hook(event, args):
        if not event.startswith("socket."):
            return
        bad = None
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            sock, addr = args[0], args[1]
            if addr is not None and getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
                if _local(addr[0]):
                    _write(f"LOOPBACK {os.getpid()} {event} {addr!r}")
                else:
                    bad = addr
        elif event == "socket.getaddrinfo" and not _local(args[0], lookup=True):
            bad = args[0]
        elif event in ("socket.gethostbyname", "socket.gethostbyaddr") and args and not _local(args[0]):
            bad = args[0]
        if bad is not None:
            _write(f"OUTBOUND {os.getpid()} {event} {bad!r}")
            raise ConnectionRefusedError(f"recorder refused {event} {bad!r}")

    _write(f"START {os.getpid()} {' '.join(sys.argv)[:300]}")
    sys.addaudithook(_hook)
''')


@pytest.fixture
def recorder(tmp_path):
    """(env for a recorded child, path of its log)."""
    site = tmp_path / "recorder"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RECORDER)
    log = tmp_path / "net.log"
    log.touch()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               HEARTH_NET_LOG=str(log), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HEARTH_HOME=str(tmp_path / "home"))
    return env, log


def outbound(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("OUTBOUND")]


@pytest.fixture
def guard():
    netguard.install()
    try:
        yield
    finally:
        netguard.uninstall()


# ------------------------------------------------------------------------------------ the guard


@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True),
    ("localhost", True), ("LOCALHOST.", True), (b"127.0.0.1", True),
    ("10.255.255.1", False), ("0.0.0.0", False), ("8.8.8.8", False), ("::ffff:8.8.8.8", False), ("2001:db8::1", False),
    ("example.com", False), ("localhost.example.com", False), ("127.1", False), ("", False), (None, False),
])
def test_loopback_addresses(host, ok):
    assert netguard.is_loopback(host) is ok


def _attempts():
    """Each a deliberate outbound attempt; none may get past the guard."""
    udp = lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # noqa: E731
    return {
        "create_connection to a name": lambda: socket.create_connection(("example.com", 80), timeout=1),
        "create_connection to an address": lambda: socket.create_connection(("10.255.255.1", 9), timeout=1),
        "connect": lambda: socket.socket().connect(("10.255.255.1", 9)),
        "connect to a name": lambda: socket.socket().connect(("example.com", 80)),
        "connect_ex": lambda: socket.socket().connect_ex(("10.255.255.1", 9)),
        "getaddrinfo": lambda: socket.getaddrinfo("example.com", 80),
        "gethostbyname": lambda: socket.gethostbyname("example.com"),
        "udp sendto": lambda: udp().sendto(b"x", ("10.255.255.1", 9)),
        "raw _socket connect": lambda: __import__("_socket").socket().connect(("10.255.255.1", 9)),
    }


@pytest.mark.parametrize("case", sorted(_attempts()))
def test_outbound_attempts_are_refused(guard, case):
    with pytest.raises(netguard.NetworkBlockedError, match="hearth is offline: refused") as e:
        _attempts()[case]()
    assert isinstance(e.value, HearthError) and isinstance(e.value, ConnectionRefusedError)


def test_ipv6_outbound_is_refused(guard):
    try:
        s = socket.socket(socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 on this machine")
    with s, pytest.raises(netguard.NetworkBlockedError, match=r"\[2001:db8::1\]:9"):
        s.connect(("2001:db8::1", 9, 0, 0))


def test_loopback_and_unix_sockets_still_work(guard, tmp_path):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(("localhost", srv.getsockname()[1]), timeout=5):
            pass
        with socket.socket() as c:
            assert c.connect_ex(("127.0.0.1", srv.getsockname()[1])) == 0
    assert socket.getaddrinfo("127.0.0.1", 80)  # numeric: no lookup leaves the machine
    assert socket.getaddrinfo(None, 80, flags=socket.AI_PASSIVE)  # a listening address
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(path)
        srv.listen()
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(path)
    a, b = socket.socketpair()
    a.close()
    b.close()


def test_offline_settings_are_forced(guard, monkeypatch):
    netguard.uninstall()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    netguard.install()
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        assert os.environ[key] == "1"


def test_uninstall_restores_socket_functions():
    netguard.uninstall()  # an in-process `hearth.cli.main` earlier in the session may have installed it
    before = (socket.socket.connect, socket.create_connection, socket.getaddrinfo)
    netguard.install()
    assert socket.socket.connect is not before[0]
    netguard.uninstall()
    assert (socket.socket.connect, socket.create_connection, socket.getaddrinfo) == before
    netguard.uninstall()  # idempotent


# ------------------------------------------------------------------------------------ in children, recorded

PHONE_HOME = """
import os, socket, sys
import hearth.cli
@hearth.cli.app.command("phone-home")
def phone_home(host: str):
    print("offline:", os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"), flush=True)
    socket.create_connection((host, 80), timeout=2)
sys.exit(hearth.cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("host", ["example.com", "10.255.255.1"])
def test_cli_refuses_a_deliberate_connection_with_hearths_error(recorder, host):
    env, log = recorder
    r = subprocess.run([sys.executable, "-c", PHONE_HOME, "phone-home", host], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"error: hearth is offline: refused a connection to {host}:80; "
                                "hearth connects only to loopback (127.0.0.1, ::1, localhost)")
    assert r.stdout.strip() == "offline: 1 1"
    assert outbound(log) == []  # refused before the socket layer: no lookup, no connect reached the system
    assert "START" in log.read_text()


def test_the_recorder_catches_an_unguarded_attempt(recorder):
    """Control: without hearth's guard the recorder sees the attempt (and refuses it, so nothing is sent)."""
    env, log = recorder
    code = "import socket\ntry:\n    socket.socket().connect_ex(('10.255.255.1', 9))\nexcept ConnectionRefusedError as e:\n    print(e)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "recorder refused" in r.stdout, r.stderr
    assert len(outbound(log)) == 1 and "10.255.255.1" in outbound(log)[0]


def test_pull_run_serve_open_no_outbound_connection(recorder):
    """The whole path with the default model, each step a real `hearth` process under the recorder."""
    import httpx

    env, log = recorder
    cmd = [sys.executable, "-m", "hearth.cli"]
    r = subprocess.run(cmd + ["pull"], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert "pulled smollm2" in r.stdout

    server = subprocess.Popen(cmd + ["serve", "smollm2", "--port", "0", "--max-num-seqs", "2"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with ThreadPoolExecutor(1) as pool:
            ran = pool.submit(subprocess.run, cmd + ["run", "smollm2", "Say hi", "--temperature", "0", "--max-tokens", "4"],
                              capture_output=True, text=True, env=env, timeout=TIMEOUT)
            port = None
            deadline = time.monotonic() + TIMEOUT
            while port is None and time.monotonic() < deadline:
                line = server.stderr.readline()
                if not line and server.poll() is not None:
                    raise AssertionError(f"server exited {server.returncode}")
                m = re.search(r"serving smollm2 on http://127\.0\.0\.1:(\d+)", line)
                port = int(m.group(1)) if m else None
            assert port, "the server never said where it listens"
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(base + "/health", timeout=30).status_code == 200
            body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
            reply = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
            assert reply.status_code == 200, reply.text
            done = ran.result()
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()
    text = log.read_text()
    assert text.count("START") >= 3, text  # pull, serve and run all ran under the recorder
    assert outbound(log) == [], text
