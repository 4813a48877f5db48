"""Text from files (model names, licences, sources, metadata) made safe to print on a terminal.

A GGUF's `general.name`, a README's licence line or a bundle's manifest can hold raw control characters:
ESC sequences retitle the window, clear the screen or rewrite earlier lines; a carriage return hides what
came before; bidirectional overrides make text read differently than it is stored. Everything hearth prints
that came from a file goes through `terminal_safe`, which writes those characters as visible escapes
(`\\x1b`, `\\u202e`) so the text stays readable and nothing reaches the terminal as a command.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls (0x80-0x9f: 0x9b is a one-byte CSI on some terminals), and the Unicode
# bidi embeddings/overrides/isolates and line/paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_MULTILINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")  # keeps \t and \n
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")  # json.dumps escapes C0 itself


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def terminal_safe(text: object, multiline: bool = False) -> str:
    """`text` as a string with every control character shown as an escape. `multiline`: keep newlines and
    tabs (for a licence or template printed as a whole); otherwise the result is one line."""
    s = text if isinstance(text, str) else str(text)
    return (_UNSAFE_MULTILINE if multiline else _UNSAFE).sub(_escape, s)


def json_safe(doc: str) -> str:
    """JSON text (from json.dumps with ensure_ascii=False) with the characters a terminal acts on written as
    `\\uXXXX` escapes: the same JSON value, safe to print. json.dumps already escapes C0 controls."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", doc)
