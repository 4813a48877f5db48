"""JSON from untrusted files and requests, parsed with bounds on size and nesting depth.

`json.loads` has no size limit and recurses once per nesting level: a 10 MB file of `[` costs
memory and recursion before it fails, and code that later walks the result recursively can blow
the stack. `loads` checks the text's size, then its nesting depth with a linear scan that does
not recurse (strings are skipped, so brackets inside them do not count), and only then parses.

    from hearth.safejson import loads, read, JSONLimitError
    cfg = loads(text, max_depth=32, max_bytes=1 << 20)
    cfg = read(path, max_depth=32, max_bytes=1 << 20)   # size checked from stat before reading

Errors: `JSONLimitError` (a HearthError and a ValueError) when a limit is exceeded; invalid JSON
raises `json.JSONDecodeError` (a ValueError) as `json.loads` does, and integers longer than
Python's digit limit raise ValueError too. Callers that catch ValueError catch all three.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from hearth.errors import HearthError

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 64 << 20

# A JSON string, or an unterminated one running to the end of the text. Because a match from a quote
# can never fail, re.sub never restarts a scan: the whole pass is linear (a pattern that must find the
# closing quote is quadratic on `"\"\"\"...`). The unrolled loop keeps the common case a single-char repeat.
_STRING = re.compile(r'"[^"\\]*(?:\\[\s\S]?[^"\\]*)*(?:"|\Z)')
_OPEN, _CLOSE = np.array([ord("["), ord("{")], np.uint8), np.array([ord("]"), ord("}")], np.uint8)


class JSONLimitError(HearthError, ValueError):
    """JSON text larger or more deeply nested than the caller allows."""


def depth(text: str) -> int:
    """The deepest nesting of arrays/objects in `text` (0 for a scalar), without recursion. For invalid JSON
    the number is an estimate (unbalanced brackets count as they come); json.loads reports the syntax error."""
    bare = _STRING.sub("", text)
    a = np.frombuffer(bare.encode("utf-8", "replace"), dtype=np.uint8)
    if not a.size:
        return 0
    step = np.isin(a, _OPEN).astype(np.int32) - np.isin(a, _CLOSE).astype(np.int32)
    return int(max(0, np.cumsum(step, dtype=np.int64).max()))


def loads(text: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """`json.loads` for untrusted text: at most `max_bytes` (UTF-8) and `max_depth` levels of nesting."""
    n = len(text) if isinstance(text, bytes) else len(text)  # chars <= bytes: a first, cheap check
    if n > max_bytes:
        raise JSONLimitError(f"JSON text of {n} bytes is larger than the limit of {max_bytes}")
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError, as json.loads would raise
    elif len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise JSONLimitError(f"JSON text is larger than the limit of {max_bytes} bytes")
    d = depth(text)
    if d > max_depth:
        raise JSONLimitError(f"JSON nested {d} levels deep; the limit is {max_depth}")
    try:
        return json.loads(text)
    except RecursionError:  # unreachable after the depth check unless max_depth is near the recursion limit
        raise JSONLimitError(f"JSON nested too deeply to parse (limit {max_depth})") from None


def read(path: Path, max_depth: int = DEFAULT_MAX_DEPTH, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Parse the JSON file at `path`; its size is checked from stat before anything is read.
    OSError propagates (the caller names the file)."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise JSONLimitError(f"{path} is not a regular file")
    size = st.st_size
    if size > max_bytes:
        raise JSONLimitError(f"{path} is {size} bytes, larger than the limit of {max_bytes} for this file")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)  # the file may have grown since stat
    return loads(data, max_depth=max_depth, max_bytes=max_bytes)
