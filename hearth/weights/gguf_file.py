"""A fast GGUF container parser: metadata and tensor index, tensor data memory-mapped.

Why not `gguf.GGUFReader`: it builds a numpy view for every element of every metadata array, which
takes ~8 s on the 98 MB default model (49k tokens + 49k merges); this parser takes ~0.1 s. Block
formats and their dequantization still come from the `gguf` package, which llama.cpp maintains.
Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3, little-endian).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hearth.errors import ModelFormatError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9


@dataclass
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (rows first), i.e. GGUF's dims reversed
    type_id: int
    offset: int  # absolute offset in the file
    n_bytes: int


class StringArray:
    """A GGUF array of strings, kept as the file's bytes plus one offset and length per string (16 bytes per
    element, not a Python str: an array of 10M empty strings costs 160 MB, not 500+). Strings decode on access."""

    def __init__(self, buf: memoryview, starts: np.ndarray, lengths: np.ndarray):
        self._buf, self._starts, self._lengths = buf, starts, lengths

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> str:
        s, n = int(self._starts[i]), int(self._lengths[i])
        return bytes(self._buf[s : s + n]).decode("utf-8", errors="replace")

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def tolist(self) -> list[str]:
        return list(self)

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings)"


class _Cursor:
    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise ModelFormatError(f"{self.path} is truncated inside its header; re-download it")

    def left(self) -> int:
        return len(self.buf) - self.pos

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self) -> str:
        n = self.scalar("<Q")
        self.need(n)  # a length beyond the file is refused before anything is read or allocated
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def strings(self, count: int) -> StringArray:
        # Each string takes at least its 8-byte length: a count beyond that is refused before the offsets are allocated.
        if count > self.left() // 8:
            raise ModelFormatError(f"{self.path} is truncated or corrupt: a metadata array claims {count} strings but only "
                                   f"{self.left()} bytes are left in the file; re-download it")
        starts = np.empty(count, np.int64)
        lengths = np.empty(count, np.int64)
        buf, pos, end, unpack = self.buf, self.pos, len(self.buf), struct.Struct("<Q").unpack_from
        for i in range(count):
            if pos + 8 > end:
                raise ModelFormatError(f"{self.path} is truncated inside its header; re-download it")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > end - pos:
                raise ModelFormatError(f"{self.path} is truncated inside its header; re-download it")
            starts[i], lengths[i] = pos, n
            pos += n
        self.pos = pos
        return StringArray(buf, starts, lengths)

    def value(self, vtype: int) -> Any:
        """A metadata value: int/float/bool/str for scalars; a read-only numpy view of the file for numeric
        arrays and a StringArray for string arrays (never a Python list: those cost ~9x the file's bytes)."""
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if etype == STRING:
                return self.strings(count)
            if etype not in _NUMPY:
                raise ModelFormatError(f"{self.path}: unknown metadata array type {etype}; the file is corrupt")
            dt = np.dtype(_NUMPY[etype])
            if count > self.left() // dt.itemsize:
                raise ModelFormatError(f"{self.path} is truncated or corrupt: a metadata array claims {count} elements but "
                                       f"only {self.left()} bytes are left in the file; re-download it")
            arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos)
            self.pos += count * dt.itemsize
            return arr.view(np.bool_) if etype == 7 else arr
        if vtype not in _SCALARS:
            raise ModelFormatError(f"{self.path}: unknown metadata type {vtype}; the file is corrupt")
        return self.scalar(_SCALARS[vtype])


class GGUFFile:
    """`metadata` (dict), `tensors` (name → GGUFTensorInfo), `data(info)` → uint8 memmap slice."""

    def __init__(self, path: Path):
        import gguf

        self.path = path
        if path.exists() and not path.is_file():  # a FIFO or device: opening it may block forever
            raise ModelFormatError(f"{path} is not a regular file; pass a .gguf file or a HF model directory")
        try:
            self.mm = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"cannot read {path}: {e}; check the path and its permissions") from None
        cur = _Cursor(memoryview(self.mm), path)
        if bytes(self.mm[:4]) != b"GGUF":  # a short file with the right magic is reported as truncated below
            raise ModelFormatError(f"{path} is not a GGUF file (bad magic); pass a .gguf file or a HF model directory")
        cur.pos = 4
        self.version = cur.scalar("<I")
        if self.version not in (2, 3):
            raise ModelFormatError(f"{path}: GGUF version {self.version} is not supported (2, 3); re-convert the model")
        n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
        # A key takes at least 12 bytes (length, type), a tensor entry at least 24 (name length, n_dims, type, offset)
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ModelFormatError(f"{path}: implausible header ({n_tensors} tensors, {n_kv} keys); the file is corrupt")
        if n_kv * 12 + n_tensors * 24 > cur.left():
            raise ModelFormatError(f"{path} is truncated or corrupt: its header declares {n_tensors} tensors and {n_kv} "
                                   f"keys, more than its {len(self.mm)} bytes can hold; re-download it")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar("<I")
            if n_dims > 4:  # GGML_MAX_DIMS
                raise ModelFormatError(f"{path}: tensor {name!r} claims {n_dims} dimensions; the file is corrupt")
            dims = [cur.scalar("<Q") for _ in range(n_dims)]
            infos.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))
        align = self.metadata.get("general.alignment", 32)
        # llama.cpp: a u32 power of two; 0 would divide by zero, a string would not compute at all
        if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align & (align - 1) or align > 1 << 20:
            raise ModelFormatError(f"{path}: general.alignment = {str(align)[:40]!r} is not a power of two; the file is corrupt")
        start = (cur.pos + align - 1) // align * align
        size = len(self.mm)
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, dims, type_id, off in infos:
            try:
                qtype = gguf.GGMLQuantizationType(type_id)
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise ModelFormatError(f"{path}: tensor {name!r} has unknown type id {type_id}; update hearth or re-convert") from None
            n = math.prod(dims)  # Python ints: dims of 2^63 cannot wrap around to a small or negative size
            shape = tuple(reversed(dims))
            if n == 0 or (dims and dims[0] % block):
                raise ModelFormatError(f"{path}: tensor {name!r} has shape {list(dims)}, which its type "
                                       f"{qtype.name} cannot hold (rows a multiple of {block}, no zero dimension)")
            info = GGUFTensorInfo(name, shape, type_id, start + off, n // block * type_size)
            if info.offset + info.n_bytes > size:
                raise ModelFormatError(
                    f"{path} is truncated: tensor {name!r} ends at byte {info.offset + info.n_bytes} "
                    f"but the file has {size}; re-download it"
                )
            self.tensors[name] = info

    def data(self, info: GGUFTensorInfo) -> np.ndarray:
        return self.mm[info.offset : info.offset + info.n_bytes]

    def type_name(self, info: GGUFTensorInfo) -> str:
        import gguf

        return gguf.GGMLQuantizationType(info.type_id).name
