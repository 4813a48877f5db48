"""Fuzzing the manifest parser: a manifest may come from anyone's bundle, so whatever its bytes are, parsing
gives a Manifest or a HearthError (the CLI's one-line error), never another exception, a hang or a crash.

Inputs are mutations of a valid manifest: fields replaced by arbitrary JSON (other types, control characters,
huge numbers, nesting), keys dropped or added, layers duplicated, and raw bytes spliced into the text.
"""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hearth.errors import HearthError
from hearth.store.manifest import Manifest

VALID = {
    "name": "tiny", "format": "hf", "schema": 1, "source": "a directory", "created": "2026-12-07T00:00:00+00:00",
    "layers": [
        {"kind": "weights", "digest": "sha256:" + "a" * 64, "size": 3000, "media_type": "application/x-safetensors",
         "filename": "model.safetensors"},
        {"kind": "params", "digest": "sha256:" + "b" * 64, "size": 24, "media_type": "application/json", "filename": "config.json"},
        {"kind": "template", "digest": "sha256:" + "c" * 64, "size": 10, "media_type": "text/plain", "filename": None},
    ],
    "summary": {"architecture": "llama", "model_name": "Tiny", "parameters": 1000, "quantization": "F32",
                "context_length": 512, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "dim": 64, "hidden_dim": 128,
                "vocab_size": 300, "rope_theta": 10000.0, "tied_embeddings": True},
    "license": {"id": "mit", "name": "MIT", "source": "LICENSE", "link": None},
}

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**18, max_value=10**40)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["", "..", "a/../b", "/etc/passwd", "x" * 300, "sha256:" + "a" * 64, "sha256:" + "a" * 64 + "\n",
                              "weights", "gguf", "hf", "a\x00b", "\x1b[2J", "model.safetensors/x", "model.safetensors"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=8)


DEEP = "@deep@"  # replaced in the text by 100k nested arrays (too deep to build as Python lists here)


def _slots(doc, out=None):
    """(container, key) for every value in the document."""
    out = [] if out is None else out
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        out.append((doc, k))
        _slots(v, out)
    return out


@st.composite
def mutated_manifests(draw) -> bytes:
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(doc)
        container, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["replace", "delete", "add", "duplicate", "nest"]))
        if op == "replace":
            container[key] = draw(json_values)
        elif op == "delete":
            del container[key]
        elif op == "add" and isinstance(container, dict):
            container[draw(st.text(max_size=8))] = draw(json_values)
        elif op == "duplicate" and isinstance(container, list):
            container.append(copy.deepcopy(container[key]))
        elif op == "nest":
            container[key] = DEEP if draw(st.booleans()) else [container[key]]
    text = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    text = text.replace(json.dumps(DEEP).encode(), b"[" * 100_000 + b"1" + b"]" * 100_000)  # nested in the text only
    if draw(st.booleans()):  # byte-level damage: a splice anywhere in the text
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(max_size=8)) + text[at + draw(st.integers(0, 8)):]
    return text


def test_the_valid_manifest_parses():
    m = Manifest.from_json(json.dumps(VALID).encode())
    assert m.name == "tiny" and len(m.layers) == 3


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifests())
def test_mutated_manifests_parse_or_fail_cleanly(data: bytes):
    try:
        m = Manifest.from_json(data)
    except HearthError as e:
        assert str(e) and "\n" not in str(e).strip()
        return
    assert isinstance(m, Manifest)
    assert Manifest.from_json(m.to_json()) == m  # what parses is written back the same
