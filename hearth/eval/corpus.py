"""Jane Austen's six novels from the Debian package r-cran-janeaustenr: a public-domain text to measure
perplexity on, offline.

The package stores the novels as R lazy-load data (`data/Rdata.rdx` + `Rdata.rdb`): the .rdx is a
compressed serialized R list `variables = list(emma = c(offset, length), ...)`, and each
(offset, length) slice of the .rdb is one object, a 4-byte big-endian uncompressed size and a zlib
stream (or a type byte and bzip2/xz), serialized in R's XDR format. Each novel is a character vector,
one element per line of the Project Gutenberg text. `read_r_serialized` below reads the handful of R
types this takes (vectors, pairlists, symbols, references); it is not a general R reader.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

from hearth.errors import HearthError

PACKAGE_DIR = Path("/usr/lib/R/site-library/janeaustenr")
INSTALL_HINT = "apt-get install -y --no-install-recommends r-cran-janeaustenr"
# Publication order, as janeaustenr::austen_books() lists them.
BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")


def austen_text(book: str | None = None, package_dir: Path | None = None) -> str:
    """One novel (a name in BOOKS), or all six in publication order, as plain text: lines joined by newlines."""
    if book is not None and book not in BOOKS:
        raise HearthError(f"unknown Austen novel {book!r}; choose one of {', '.join(BOOKS)}")
    novels = austen_books(package_dir)
    return "\n".join("\n".join(novels[b]) for b in ([book] if book else BOOKS))


def austen_books(package_dir: Path | None = None) -> dict[str, list[str]]:
    """{novel name: its lines} for the six novels."""
    data = (package_dir or PACKAGE_DIR) / "data"
    rdx, rdb = data / "Rdata.rdx", data / "Rdata.rdb"
    if not (rdx.is_file() and rdb.is_file()):
        raise HearthError(f"the Jane Austen corpus needs the Debian package r-cran-janeaustenr: {INSTALL_HINT}")
    try:
        index = read_r_serialized(_decompress_file(rdx.read_bytes()))
        blob = rdb.read_bytes()
        variables = index["variables"]
        books = {}
        for name in BOOKS:
            offset, length = (int(x) for x in variables[name])
            books[name] = read_r_serialized(_decompress_blob(blob[offset : offset + length]))
    except (KeyError, ValueError, TypeError, struct.error, zlib.error, OSError, EOFError, lzma.LZMAError) as e:
        raise HearthError(f"cannot read the Austen novels in {data} ({e}); reinstall: {INSTALL_HINT}") from None
    for name, lines in books.items():
        if not isinstance(lines, list) or not all(isinstance(s, str) for s in lines):
            raise HearthError(f"{data}: {name} is not a character vector; reinstall: {INSTALL_HINT}")
    return books


def _decompress_file(raw: bytes) -> bytes:
    """A whole .rds/.rdx file: gzip (R's default), bzip2, xz, or uncompressed."""
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    if raw[:3] == b"BZh":
        return bz2.decompress(raw)
    if raw[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(raw)
    return raw


def _decompress_blob(raw: bytes) -> bytes:
    """One lazy-load database entry (R's R_decompress1/2/3)."""
    size = struct.unpack(">I", raw[:4])[0]
    if raw[4:6] == b"\x78\x9c" or raw[4:5] == b"\x78":  # zlib, no type byte
        out = zlib.decompress(raw[4:])
    else:
        kind, body = raw[4:5], raw[5:]
        if kind == b"0":
            out = body
        elif kind == b"2":
            out = bz2.decompress(body)
        elif kind in (b"X", b"Z"):
            out = lzma.decompress(body)
        else:
            raise ValueError(f"unknown compression type {kind!r}")
    if len(out) != size:
        raise ValueError(f"entry decompresses to {len(out)} bytes, its header says {size}")
    return out


# R's SEXP types (Rinternals.h) and serialization pseudo-types (serialize.c).
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP, BASENAMESPACE_SXP = 255, 254, 253, 252, 251, 247
EMPTYENV_SXP, BASEENV_SXP = 242, 241
NA_INTEGER = -(2**31)
LATIN1_MASK = 1 << 2  # a CHARSXP's encoding bit (its "levels"); otherwise UTF-8 or ASCII


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated R data")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def item(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind in (NILVALUE_SXP, NILSXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP, BASENAMESPACE_SXP,
                    EMPTYENV_SXP, BASEENV_SXP):
            return None
        if kind == REFSXP:
            idx = flags >> 8 or self.int()
            return self.refs[idx - 1]
        if kind == SYMSXP:
            sym = self.item()  # its name, a CHARSXP
            self.refs.append(sym)
            return sym
        if kind == LISTSXP:  # a pairlist: (attributes), (tag), value, rest
            out: dict[str, Any] = {}
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            out[tag if tag is not None else str(len(out))] = self.item()
            rest = self.item()
            if isinstance(rest, dict):
                out.update(rest)
            return out
        if kind == CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            latin1 = (flags >> 12) & LATIN1_MASK
            return self.bytes(n).decode("latin-1" if latin1 else "utf-8", errors="replace")
        if kind in (LGLSXP, INTSXP):
            n = self.int()
            vals = struct.unpack(f">{n}i", self.bytes(4 * n))
            value: Any = [None if v == NA_INTEGER else (bool(v) if kind == LGLSXP else v) for v in vals]
        elif kind == REALSXP:
            n = self.int()
            value = list(struct.unpack(f">{n}d", self.bytes(8 * n)))
        elif kind in (STRSXP, VECSXP):
            n = self.int()
            value = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"R type {kind} is not supported here")
        if has_attr:
            names = self.item().get("names")
            if kind == VECSXP and names is not None:
                return dict(zip(names, value))
        return value


def read_r_serialized(data: bytes) -> Any:
    """An object serialized by R's `serialize()` in XDR format (versions 2 and 3), as Python values:
    character/numeric/logical vectors → lists, named lists → dicts."""
    if data[:2] != b"X\n":
        raise ValueError("not R XDR serialization data")
    r = _Reader(data)
    r.pos = 2
    version = r.int()
    r.int(), r.int()  # the writer's R version, the oldest R that can read it
    if version == 3:
        r.bytes(r.int())  # the native encoding's name
    elif version != 2:
        raise ValueError(f"R serialization version {version} is not supported")
    return r.item()
