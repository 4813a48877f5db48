"""Untrusted model files: every size a file declares is checked against the file before anything is allocated,
metadata arrays stay numpy/bytes, shards stay inside their directory, and each bad file is one clear error.

Each attack edits a tiny loadable model (tests/store_kit.py) the way an attacker would: a few bytes of a GGUF,
one value of a config.json. `hearth run` and `hearth pull` on the edited files give exit 1 and one `error:` line.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from hearth import safejson
from hearth.errors import HearthError, ModelFormatError
from hearth.weights import open_checkpoint
from hearth.weights.gguf_file import GGUFFile, StringArray, _Cursor
from store_kit import one_line_error, run_main, write_tiny_gguf, write_tiny_hf

pytestmark = pytest.mark.usefixtures("home")  # every test runs against an empty store of its own

# The GGUF value types, as the spec numbers them
U32, I32, STRING, ARRAY, U64 = 4, 5, 8, 9, 10


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("limits") / "tiny.gguf")


@pytest.fixture(scope="module")
def good_hf(tmp_path_factory) -> Path:
    return write_tiny_hf(tmp_path_factory.mktemp("limits") / "tiny-hf")


def value_offset(path: Path, key: str) -> tuple[int, int]:
    """(offset of the value, its GGUF type) of metadata `key`, found by walking the header as the parser does."""
    f = GGUFFile(path)
    cur = _Cursor(memoryview(f.mm), path)
    cur.pos = 24
    for _ in range(len(f.metadata)):
        k = cur.string()
        vtype = cur.scalar("<I")
        if k == key:
            return cur.pos, vtype
        cur.value(vtype)
    raise KeyError(key)


def patched(src: Path, dst: Path, key: str, fmt: str, value, skip: int = 0) -> Path:
    """A copy of `src` with `fmt` packed at metadata `key`'s value (+ `skip` bytes): the attacker's few-byte edit."""
    at, _ = value_offset(src, key)
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, at + skip, value)
    dst.write_bytes(bytes(data))
    return dst


def hf_copy(src: Path, dst: Path, **config) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def refused(path: Path, *needles: str, seconds: float = 2.0) -> str:
    t0 = time.perf_counter()
    with pytest.raises(ModelFormatError) as e:
        open_checkpoint(path)
    assert time.perf_counter() - t0 < seconds
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n.lower() in msg.lower(), f"{n!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------------- layer counts


def test_gguf_block_count_edited_to_billions_is_refused_at_once(good_gguf, tmp_path):
    # before: check_complete built the names of 2^31 layers (gigabytes, still growing)
    bad = patched(good_gguf, tmp_path / "layers.gguf", "llama.block_count", "<I", 0x7FFFFFFF)
    tracemalloc.start()
    try:
        refused(bad, "llama.block_count", "2147483647")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, peak


def test_gguf_block_count_off_by_a_few_still_names_the_missing_tensor(good_gguf, tmp_path):
    bad = write_tiny_gguf(tmp_path / "bc.gguf", extra={"llama.block_count": 5})
    with pytest.raises(ModelFormatError, match="missing tensor layers.2"):
        open_checkpoint(bad).check_complete()


def test_hf_num_hidden_layers_in_the_billions_is_refused(good_hf, tmp_path):
    bad = hf_copy(good_hf, tmp_path / "hf", num_hidden_layers=1_000_000_000)
    refused(bad, "num_hidden_layers", "1000000000")


def test_dimensions_the_file_cannot_hold_are_refused(good_gguf, good_hf, tmp_path):
    # vocab x dim far beyond the file's bytes (and beyond int64 as a product with the other dims)
    refused(patched(good_gguf, tmp_path / "dim.gguf", "llama.embedding_length", "<I", 0xFFFFFFFF), "llama.embedding_length")
    refused(write_tiny_gguf(tmp_path / "ffn.gguf", extra={"llama.feed_forward_length": 60000}), "weights", "bytes")
    refused(write_tiny_gguf(tmp_path / "ctx.gguf", extra={"llama.context_length": 2**62}), "llama.context_length")
    refused(hf_copy(good_hf, tmp_path / "hf-vocab", vocab_size=2**40, hidden_size=2**40), "hidden_size")
    refused(hf_copy(good_hf, tmp_path / "hf-ffn", intermediate_size=1_000_000), "weights", "bytes")


def test_tensor_dims_that_overflow_are_refused(good_gguf, tmp_path):
    # token_embd's first dim set to 2^62: the product wrapped around in numpy and was accepted as a small tensor
    data = bytearray(good_gguf.read_bytes())
    name = b"token_embd.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    assert struct.unpack_from("<I", data, at)[0] == 2
    struct.pack_into("<Q", data, at + 4, 2**62)
    bad = tmp_path / "dims.gguf"
    bad.write_bytes(bytes(data))
    refused(bad, "token_embd.weight")


# ------------------------------------------------------------------------------------- metadata arrays


def test_metadata_arrays_stay_numpy_and_bytes(good_gguf):
    f = GGUFFile(good_gguf)
    tokens = f.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, StringArray) and len(tokens) == 384 and tokens[2] == "<|im_end|>"
    assert isinstance(f.metadata["tokenizer.ggml.token_type"], np.ndarray)


def with_u32_array(src: Path, dst: Path, key: str, values: np.ndarray) -> Path:
    """`src` with one more metadata key, an array of u32, inserted first. The inserted bytes are a multiple of the
    32-byte alignment, so the tensor data stays aligned and the offsets relative to it stay right."""
    kv = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<IIQ", ARRAY, U32, len(values)) + values.astype("<u4").tobytes()
    assert len(kv) % 32 == 0, len(kv)
    data = bytearray(src.read_bytes())
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    struct.pack_into("<Q", data, 16, n_kv + 1)
    dst.write_bytes(bytes(data[:24]) + kv + bytes(data[24:]))
    return dst


def test_a_large_metadata_array_costs_no_more_than_its_bytes(good_gguf, tmp_path):
    # before: 2M u32 (8 MB in the file) became a Python list of ~72 MB
    big = with_u32_array(good_gguf, tmp_path / "big.gguf", "test.big", np.arange(2_000_000))
    tracemalloc.start()
    try:
        f = GGUFFile(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(f.metadata["test.big"], np.ndarray) and f.metadata["test.big"][-1] == 1_999_999
    assert peak < 4 << 20, peak
    ckpt = open_checkpoint(big)  # loads; the huge array is not handed on as a list
    ckpt.check_complete()
    assert "test.big" not in ckpt.metadata


def test_an_array_longer_than_the_file_is_refused_before_allocating(good_gguf, tmp_path):
    # the element count of tokenizer.ggml.token_type (u32 etype, then u64 count) set to 2^60
    bad = patched(good_gguf, tmp_path / "arr.gguf", "tokenizer.ggml.token_type", "<Q", 2**60, skip=4)
    refused(bad, "array", "bytes are left")
    bad = patched(good_gguf, tmp_path / "strs.gguf", "tokenizer.ggml.tokens", "<Q", 2**40, skip=4)
    refused(bad, "strings", "bytes are left")


# ------------------------------------------------------------------------------------- one clear error


def test_alignment_zero_is_one_error(good_gguf, tmp_path):
    bad = write_tiny_gguf(tmp_path / "a0.gguf", extra={"general.alignment": 0})
    refused(bad, "general.alignment")
    refused(write_tiny_gguf(tmp_path / "a3.gguf", extra={"general.alignment": 24}), "general.alignment")
    refused(write_tiny_gguf(tmp_path / "as.gguf", extra={"general.alignment": "32"}), "general.alignment")


def test_a_string_where_an_integer_belongs(tmp_path):
    refused(write_tiny_gguf(tmp_path / "s.gguf", extra={"llama.embedding_length": "sixty-four"}),
            "llama.embedding_length", "not an integer")
    refused(write_tiny_gguf(tmp_path / "s2.gguf", extra={"llama.attention.head_count": "4"}),
            "llama.attention.head_count", "not an integer")
    refused(write_tiny_gguf(tmp_path / "s3.gguf", extra={"tokenizer.ggml.bos_token_id": "0"}), "bos_token_id")


def test_a_chat_template_stored_as_an_array(tmp_path):
    refused(write_tiny_gguf(tmp_path / "t.gguf", extra={"tokenizer.chat_template": ["{{ x }}", "y"]}),
            "tokenizer.chat_template", "not a string")


def test_tokenizer_arrays_of_the_wrong_type(tmp_path):
    refused(write_tiny_gguf(tmp_path / "tt.gguf", extra={"tokenizer.ggml.token_type": ["a", "b"]}), "token_type")
    refused(write_tiny_gguf(tmp_path / "tn.gguf", extra={"tokenizer.ggml.tokens": [1, 2, 3]}), "tokenizer.ggml.tokens")
    refused(write_tiny_gguf(tmp_path / "tm.gguf", extra={"tokenizer.ggml.model": 7}), "tokenizer.ggml.model")


def test_an_out_of_range_bos_id(good_gguf, tmp_path):
    bad = patched(good_gguf, tmp_path / "bos.gguf", "tokenizer.ggml.bos_token_id", "<I", 99_999)
    refused(bad, "bos_token_id", "99999", "outside the vocabulary")


def test_hf_bos_id_outside_the_vocabulary(good_hf, tmp_path):
    from hearth.tokenizer import Tokenizer

    bad = hf_copy(good_hf, tmp_path / "hf")
    gen = json.loads((bad / "generation_config.json").read_text())
    (bad / "generation_config.json").write_text(json.dumps({**gen, "bos_token_id": 10_000}))
    with pytest.raises(ModelFormatError, match="BOS token id 10000 is outside"):
        Tokenizer.from_data(open_checkpoint(bad).tokenizer)


@pytest.mark.parametrize("config, needle", [
    ({"rope_parameters": "yarn please"}, "rope_parameters"),
    ({"rope_parameters": {"rope_type": "llama3"}}, "lacks 'factor'"),
    ({"rope_parameters": {"rope_type": "linear", "factor": "two"}}, "rope_parameters.factor"),
    ({"rope_scaling": [1, 2]}, "rope_scaling"),
    ({"rope_scaling": {"type": ["linear"]}}, "not supported"),
    ({"num_attention_heads": "4"}, "num_attention_heads"),
    ({"hidden_size": None}, "hidden_size"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
])
def test_malformed_hf_config_values(good_hf, tmp_path, config, needle):
    refused(hf_copy(good_hf, tmp_path / "hf", **config), needle)


@pytest.mark.parametrize("text, needle", [
    ('{"added_tokens": [1, 2]}', "added_tokens"),
    ('{"added_tokens": {"content": "x"}}', "added_tokens"),
    ("[" * 100_000, "nested"),
    ('{"model": "', "not valid JSON"),
    ("[1]", "where an object belongs"),
])
def test_malformed_tokenizer_json(good_hf, tmp_path, text, needle):
    bad = hf_copy(good_hf, tmp_path / "hf")
    (bad / "tokenizer.json").write_text(text)
    refused(bad, needle)


def test_deep_config_json_is_refused_without_recursion(good_hf, tmp_path):
    bad = hf_copy(good_hf, tmp_path / "hf")
    (bad / "config.json").write_text('{"a": ' + "[" * 1_000_000 + "]" * 1_000_000 + "}")
    refused(bad, "config.json", "nested")


# ------------------------------------------------------------------------------------- shards


def _index(d: Path, shard: str) -> Path:
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": shard}}))
    return d


def test_index_shards_outside_the_directory_are_refused(good_hf, tmp_path):
    secret = tmp_path / "secret.safetensors"
    shutil.copyfile(good_hf / "model.safetensors", secret)
    for shard in ("../secret.safetensors", str(secret), "sub/../../secret.safetensors"):
        d = hf_copy(good_hf, tmp_path / f"hf{abs(hash(shard))}")
        refused(_index(d, shard), "outside the model directory")
    d = hf_copy(good_hf, tmp_path / "hf-link")
    (d / "evil.safetensors").symlink_to(secret)
    refused(_index(d, "evil.safetensors"), "outside the model directory")
    d = hf_copy(good_hf, tmp_path / "hf-single-link")  # no index: model.safetensors itself links out
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").symlink_to(secret)
    refused(d, "outside the model directory")
    d = hf_copy(good_hf, tmp_path / "hf-dirlink")
    (d / "sub").symlink_to(tmp_path)
    refused(_index(d, "sub/secret.safetensors"), "outside the model directory")


def test_pull_refuses_any_file_that_links_out_of_the_directory(good_hf, tmp_path, capsys):
    """Not only shards: a README, generation config or licence that links to a secret would be copied into the store
    and travel in every bundle exported from it."""
    secret = tmp_path / "docker-config.json"  # valid JSON: the readers parse generation_config.json first
    secret.write_text('{"auths": {"registry.example": {"auth": "c2VjcmV0"}}}')
    for name in ("README.md", "generation_config.json", "LICENSE"):
        d = hf_copy(good_hf, tmp_path / f"hf-{name}")
        (d / name).unlink(missing_ok=True)
        (d / name).symlink_to(secret)
        rc, out, err = run_main(capsys, "pull", str(d), "--name", "leak")
        one_line_error(rc, err, "links outside the model directory")
        rc, out, _ = run_main(capsys, "list")
        assert "leak" not in out
    d = hf_copy(good_hf, tmp_path / "hf-inside")
    (d / "README.md").unlink(missing_ok=True)
    (d / "notes.md").write_text("# notes\n")
    (d / "README.md").symlink_to(d / "notes.md")  # a link within the directory is fine
    rc, _, err = run_main(capsys, "pull", str(d), "--name", "fine")
    assert rc == 0, err


def test_index_shard_inside_the_directory_still_loads(good_hf, tmp_path):
    d = hf_copy(good_hf, tmp_path / "hf")
    (d / "weights").mkdir()
    (d / "model.safetensors").rename(d / "weights" / "part-1.safetensors")
    ckpt = open_checkpoint(_index(d, "weights/part-1.safetensors"))
    ckpt.check_complete()


def test_hub_cache_snapshots_read_their_own_blobs_only(good_hf, tmp_path):
    from store_kit import write_hub_entry

    snap = next((write_hub_entry(tmp_path / "cache", "org/tiny", good_hf) / "snapshots").iterdir())
    assert (snap / "model.safetensors").is_symlink()
    open_checkpoint(snap).check_complete()  # snapshots/<rev>/* link to ../../blobs/*: allowed
    other = next((write_hub_entry(tmp_path / "cache", "org/other", good_hf) / "blobs").iterdir())
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(other)  # another entry's blob: outside this model
    refused(snap, "outside the model directory")


# ------------------------------------------------------------------------------------- the CLI


def _cli_cases(good_gguf: Path, good_hf: Path, t: Path) -> dict[str, tuple[Path, str]]:
    return {
        "gguf layers": (patched(good_gguf, t / "layers.gguf", "llama.block_count", "<I", 0x7FFFFFFF), "llama.block_count"),
        "hf layers": (hf_copy(good_hf, t / "hf-layers", num_hidden_layers=400_000_000), "num_hidden_layers"),
        "alignment 0": (write_tiny_gguf(t / "a0.gguf", extra={"general.alignment": 0}), "general.alignment"),
        "bos": (patched(good_gguf, t / "bos.gguf", "tokenizer.ggml.bos_token_id", "<I", 99_999), "bos_token_id"),
        "template array": (write_tiny_gguf(t / "tpl.gguf", extra={"tokenizer.chat_template": ["a", "b"]}), "chat_template"),
        "index traversal": (_index(hf_copy(good_hf, t / "hf-index"), "../../etc/x"), "outside the model directory"),
        "rope": (hf_copy(good_hf, t / "hf-rope", rope_parameters=[1]), "rope_parameters"),
    }


@pytest.mark.parametrize("command", ["run", "pull"])
def test_cli_gives_one_error_line_for_each_bad_file(capsys, good_gguf, good_hf, tmp_path, command, home):
    for case, (path, needle) in _cli_cases(good_gguf, good_hf, tmp_path).items():
        args = (command, str(path), "hi", "--max-tokens", "1") if command == "run" else (command, str(path))
        rc, out, err = run_main(capsys, *args)
        assert rc == 1, (case, rc, err)
        one_line_error(rc, err, needle)
        assert len(err.strip().splitlines()) == 1, (case, err)
    assert not (home / "manifests").exists() or not list((home / "manifests").iterdir())


def test_safejson_bounds():
    assert safejson.loads('{"a": [1, {"b": "[[[["}]}', max_depth=3) == {"a": [1, {"b": "[[[["}]}
    with pytest.raises(safejson.JSONLimitError, match="nested 4 levels"):
        safejson.loads("[[[[]]]]", max_depth=3)
    with pytest.raises(safejson.JSONLimitError, match="larger"):
        safejson.loads("[1, 2, 3]", max_bytes=4)
    assert issubclass(safejson.JSONLimitError, HearthError) and issubclass(safejson.JSONLimitError, ValueError)
    t0 = time.perf_counter()
    with pytest.raises(ValueError):  # an unterminated string of escapes: linear, not quadratic
        safejson.loads('"' + '\\"' * 1_000_000, max_bytes=1 << 22)
    assert time.perf_counter() - t0 < 2


def test_console_script_gives_one_line_and_exit_1(good_gguf, tmp_path, home):
    # the real entry point in its own process (as tests/test_cli.py runs it): no traceback reaches the terminal
    from store_kit import run_cli

    bad = patched(good_gguf, tmp_path / "layers.gguf", "llama.block_count", "<I", 0x7FFFFFFF)
    r = run_cli(home, "run", str(bad), "hi", "--max-tokens", "1", timeout=120)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {bad}: llama.block_count = 2147483647 is implausible (limit 1024); the file is corrupt"]
