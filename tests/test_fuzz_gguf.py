"""Hypothesis mutates the header, metadata and tensor index of a valid tiny GGUF: the reader either opens the
file or raises a HearthError, never another exception, and never takes more than a bounded time or memory.

The mutations are byte overwrites with values an attacker would pick (0, all ones, sign bits, random) at the
header's fields (counts, lengths, types, values, tensor dims and offsets) or anywhere before the tensor data, plus
truncation; each example re-reads the whole file through open_checkpoint and,
where it opens, builds its tokenizer and checks that its tensors are complete (what `hearth pull` does).
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hearth.errors import HearthError  # noqa: E402
from hearth.weights import open_checkpoint  # noqa: E402
from hearth.weights.gguf_file import GGUFFile, _Cursor  # noqa: E402
from store_kit import write_tiny_gguf  # noqa: E402

MAX_SECONDS = 3.0
MAX_PEAK = 64 << 20  # the valid file's tokenizer costs ~2 MB; an exploded array or name list costs gigabytes


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory) -> tuple[Path, int, list[int]]:
    """The valid file, where its tensor data starts, and the offset of every field of its header (counts, key
    lengths, value types, values, array types and counts, tensor dims, types and offsets): mutations aim there."""
    path = write_tiny_gguf(tmp_path_factory.mktemp("fuzz") / "seed.gguf")
    f = GGUFFile(path)
    cur = _Cursor(memoryview(f.mm), path)
    fields = [4, 8, 16]  # version, tensor count, key count
    cur.pos = 24
    for _ in range(len(f.metadata)):
        fields.append(cur.pos)
        cur.string()
        fields.append(cur.pos)
        vtype = cur.scalar("<I")
        fields.append(cur.pos)
        if vtype == 9:
            fields.append(cur.pos + 4)  # the element count
        cur.value(vtype)
    for _ in range(len(f.tensors)):
        fields.append(cur.pos)
        cur.string()
        fields.append(cur.pos)
        n_dims = cur.scalar("<I")
        fields += [cur.pos + 8 * i for i in range(n_dims + 1)] + [cur.pos + 8 * n_dims + 4]
        cur.pos += 8 * n_dims + 12
    return path, min(i.offset for i in f.tensors.values()), fields


INTERESTING = [b"\x00" * 8, b"\xff" * 8, struct.pack("<Q", 2**63), struct.pack("<Q", 2**31 - 1),
               struct.pack("<I", 0x7FFFFFFF), struct.pack("<Q", 1 << 40), b"\x09\x00\x00\x00", b"\x08\x00\x00\x00"]
patch_value = st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=8))
# where: a header field (index into the seed's list) or any byte before the tensor data (a fraction of it)
where = st.one_of(st.integers(0, 10_000).map(lambda i: ("field", i)), st.floats(0, 1, exclude_max=True).map(lambda x: ("byte", x)))
mutation = st.tuples(where, patch_value)


def _open(path: Path) -> None:
    from hearth.tokenizer import Tokenizer

    ckpt = open_checkpoint(path)
    ckpt.check_complete()
    Tokenizer.from_data(ckpt.tokenizer)


@settings(max_examples=150, deadline=MAX_SECONDS * 1000, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(mutations=st.lists(mutation, min_size=1, max_size=3),
       truncate=st.one_of(st.none(), st.none(), st.none(), st.floats(0.5, 1)))
def test_mutated_gguf_opens_or_raises_a_hearth_error(seed_file, tmp_path, mutations, truncate):
    seed, data_start, fields = seed_file
    original = seed.read_bytes()
    data = bytearray(original)
    for (kind, pos), value in mutations:
        at = fields[pos % len(fields)] if kind == "field" else 4 + int(pos * (data_start - 4))
        data[at : at + len(value)] = value
        del data[len(original):]
    if truncate is not None:
        del data[int(truncate * len(data)):]
    path = tmp_path / "fuzzed.gguf"
    path.write_bytes(bytes(data))
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        _open(path)
        event("opened")
    except HearthError as e:
        assert str(e) and "\n" not in str(e)
        event("refused: " + str(e).removeprefix(str(path)).split(";")[0][:40])
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < MAX_SECONDS
    assert peak < MAX_PEAK, peak
