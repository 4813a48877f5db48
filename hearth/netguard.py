"""Never online: refuse every network connection that is not to this machine, before a packet leaves.

hearth runs models offline; this makes that a guarantee rather than a habit. `install()` (called first
thing by `hearth.cli.main`, and importable for library users) does three things:

- forces the offline switches of libraries that might otherwise try the network (`HF_HUB_OFFLINE=1`,
  `TRANSFORMERS_OFFLINE=1`, ...);
- wraps `socket.socket.connect`/`connect_ex`/`sendto`, `socket.create_connection` and
  `socket.getaddrinfo`, so a non-loopback address or a host name other than `localhost` is refused
  *before* any name lookup (a lookup is itself a packet to a DNS server);
- adds an audit hook (`sys.addaudithook`) on the `socket.*` events as a backstop for sockets made
  below those wrappers (`_socket.socket`, C extensions that go through CPython's socket module).

Allowed: 127.0.0.0/8, ::1 (and ::ffff:127.x), the name `localhost`, and every non-IP family (AF_UNIX,
AF_NETLINK, ...). Listening is not connecting: `hearth serve --host 0.0.0.0` still works. The refusal is
a `NetworkBlockedError`, both a HearthError (the CLI prints one line) and a ConnectionRefusedError (code
that handles "network unreachable" handles it too). Audit hooks cannot be removed, so `uninstall()` (for
tests) restores the wrappers and leaves the hook in place, inert.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading

from hearth.errors import HearthError

# Libraries that look for these stay off the network on their own; forced, not defaulted.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_INET = (socket.AF_INET, socket.AF_INET6)


class NetworkBlockedError(HearthError, ConnectionRefusedError):
    """hearth refused a connection (or a name lookup) that would have left this machine."""


_lock = threading.Lock()
_active = False
_hooked = False
_originals: dict[str, object] = {}


def is_installed() -> bool:
    return _active


def is_loopback(host: object) -> bool:
    """True for 127.0.0.0/8, ::1, ::ffff:127.x and `localhost`; False for anything else, names included."""
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    h = host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]").split("%", 1)[0]
    if h in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _is_ip_literal(host: object) -> bool:
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    try:
        ipaddress.ip_address(str(host).strip("[]").split("%", 1)[0])
        return True
    except ValueError:
        return False


def _lookup_allowed(host: object) -> bool:
    """A lookup sends nothing when it is local: no host (a listening address), loopback, or an IP literal."""
    return host is None or is_loopback(host) or _is_ip_literal(host)


def _describe(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        host = host.decode("ascii", "replace") if isinstance(host, (bytes, bytearray)) else host
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def refuse(what: str) -> NetworkBlockedError:
    return NetworkBlockedError(
        f"hearth is offline: refused {what}; hearth connects only to loopback (127.0.0.1, ::1, localhost)"
    )


def _check_address(family: int, address: object, verb: str = "a connection to") -> None:
    if family not in _INET or not isinstance(address, tuple) or not address:
        return  # AF_UNIX paths, netlink, ...: never leave the machine
    if not is_loopback(address[0]):
        raise refuse(f"{verb} {_describe(address)}")


# ------------------------------------------------------------------------------------------- wrappers


def _connect(self, address):
    _check_address(self.family, address)
    return _originals["connect"](self, address)


def _connect_ex(self, address):
    _check_address(self.family, address)
    return _originals["connect_ex"](self, address)


def _sendto(self, data, *args):
    if args:  # sendto(data, address) or sendto(data, flags, address)
        _check_address(self.family, args[-1], "sending to")
    return _originals["sendto"](self, data, *args)


def _create_connection(address, *args, **kwargs):
    if not (isinstance(address, tuple) and address and is_loopback(address[0])):
        raise refuse(f"a connection to {_describe(address)}")
    return _originals["create_connection"](address, *args, **kwargs)


def _getaddrinfo(host, *args, **kwargs):
    if not _lookup_allowed(host):
        raise refuse(f"a name lookup of {host!r}")
    return _originals["getaddrinfo"](host, *args, **kwargs)


def _audit(event: str, args: tuple) -> None:
    """Backstop below the wrappers. Raising here aborts the call before the system call is made."""
    if not _active or not event.startswith("socket."):
        return
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[1]
        if address is not None:
            _check_address(getattr(sock, "family", -1), address, "sending to" if event != "socket.connect" else "a connection to")
    elif event == "socket.getaddrinfo":
        if not _lookup_allowed(args[0]):
            raise refuse(f"a name lookup of {args[0]!r}")
    elif event in ("socket.gethostbyname", "socket.gethostbyaddr"):
        if args and not is_loopback(args[0]):
            raise refuse(f"a name lookup of {args[0]!r}")


_WRAPPERS = {
    "connect": (socket.socket, _connect),
    "connect_ex": (socket.socket, _connect_ex),
    "sendto": (socket.socket, _sendto),
    "create_connection": (socket, _create_connection),
    "getaddrinfo": (socket, _getaddrinfo),
}


def force_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value


def install() -> None:
    """Refuse every non-loopback connection from now on, in this process. Idempotent."""
    global _active, _hooked
    force_offline_env()
    with _lock:
        if _active:
            return
        for name, (owner, wrapper) in _WRAPPERS.items():
            _originals[name] = getattr(owner, name)
            setattr(owner, name, wrapper)
        if not _hooked:
            sys.addaudithook(_audit)
            _hooked = True
        _active = True


def uninstall() -> None:
    """Put the socket functions back (the audit hook stays, inert). For tests; hearth never calls it."""
    global _active
    with _lock:
        if not _active:
            return
        for name, (owner, _) in _WRAPPERS.items():
            setattr(owner, name, _originals.pop(name))
        _active = False
