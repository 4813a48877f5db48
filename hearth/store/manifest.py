"""A model in the store: its name, its layers (blobs by digest) and what hearth learned about it at pull time.

Manifests are JSON, one file per model (`manifests/<name>.json`). Parsing is strict: unknown keys, bad
digests and unsafe file names are errors, because a manifest may come from a bundle someone handed over.
Everything a manifest claims is checked here, before a bundle's bytes are written anywhere: its size and
nesting depth (hearth.safejson), file names the filesystem can hold (no component over NAME_MAX, no control
characters, no file that is also another's directory), and one size per digest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from hearth import safejson
from hearth.errors import HearthError
from hearth.store.blobs import DIGEST_RE

SCHEMA = 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # whole name (fullmatch: "$" would pass "abc\n")
# weights: the GGUF file or safetensors (+ index); tokenizer: tokenizer.json & co.; template: the chat
# template; params: config.json / generation_config.json (GGUF: a summary, the real config is in the
# weights); license: LICENSE, USE_POLICY.md, ...; card: README.md.
KINDS = ("weights", "tokenizer", "template", "params", "license", "card", "lineage")  # lineage: store/lineage.py
FORMATS = ("gguf", "hf")
MAX_BYTES = 1 << 20  # a real manifest is a few KB; the cap bounds what a damaged or hostile one costs to read
MAX_DEPTH = 8  # a manifest nests 3 deep (object, layers, layer), a bundle's document 4
NAME_MAX = 255  # bytes per path component on ext4, xfs, btrfs, tmpfs
PATH_MAX = 1024  # bytes per file name: well inside PATH_MAX (4096) with the store's own path in front


class ManifestError(HearthError, ValueError):
    """A manifest that cannot be used (invalid JSON, too big or deep, or an invalid field). A ValueError too,
    so callers that caught the parser's ValueError still do."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.endswith((".json", ".tmp")):
        raise HearthError(
            f"invalid model name {name!r}: use up to 100 letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def _check_filename(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise ValueError("a layer's filename must be a string or null")
    p = PurePosixPath(name)
    if not name or p.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")) or "\\" in name:
        raise ValueError(f"unsafe file name {name!r}")
    # Control characters (NUL included, which os.symlink rejects with a ValueError) and unpaired surrogates
    # (which cannot be encoded): names a loader could never open, or a terminal would act on.
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise ValueError(f"unsafe file name {name!r}: it holds control characters")
    encoded = name.encode("utf-8")
    if len(encoded) > PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise ValueError(f"file name {name[:60]!r}... is too long: at most {NAME_MAX} bytes per part and {PATH_MAX} in all")
    return name


def _strict(cls, d: Any, what: str):
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{what} has unknown key {sorted(unknown)[0]!r}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = required - set(d)
    if missing:
        raise ValueError(f"{what} lacks {sorted(missing)[0]!r}")
    for f in dataclasses.fields(cls):  # plain fields: the JSON type they must have (a bundle comes from anyone)
        check = _PLAIN_TYPES.get(f.type)
        if check is not None and f.name in d and not check[0](d[f.name]):
            raise ValueError(f"{what}.{f.name} must be {check[1]}, not {d[f.name]!r}")
    return cls(**d)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_PLAIN_TYPES = {  # annotation (a string: `from __future__ import annotations`) -> (check, what to say)
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "int": (_is_int, "an integer"),
    "float": (lambda v: _is_int(v) or (isinstance(v, float) and math.isfinite(v)), "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}


@dataclass(frozen=True)
class Layer:
    """One blob of a model. `filename`: where it sits in the model's directory; None for a layer that
    describes the model but is not read by the loader (e.g. a GGUF's chat template, kept for `show`)."""

    kind: str
    digest: str
    size: int
    media_type: str
    filename: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"layer kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(self.digest, str) or not DIGEST_RE.match(self.digest):
            raise ValueError(f"layer digest {self.digest!r} is not sha256:<64 hex digits>")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ValueError(f"layer size {self.size!r} is not a byte count")
        if not isinstance(self.media_type, str):
            raise ValueError("layer media_type must be a string")
        _check_filename(self.filename)

    @property
    def label(self) -> str:
        """How errors name this layer: `weights (model.gguf)`."""
        return f"{self.kind} ({self.filename})" if self.filename else self.kind


@dataclass(frozen=True)
class Summary:
    """What `hearth list` and `hearth show` print, read from the checkpoint once at pull time."""

    architecture: str
    model_name: str
    parameters: int
    quantization: str
    context_length: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    dim: int
    hidden_dim: int
    vocab_size: int
    rope_theta: float = 10000.0
    tied_embeddings: bool = False


@dataclass(frozen=True)
class LicenseInfo:
    """The license as found: `id` is normalised (apache-2.0, llama3.2, ...) or None when only a text was found."""

    id: str | None
    name: str | None
    source: str
    link: str | None = None


@dataclass
class Manifest:
    name: str
    format: str
    layers: list[Layer]
    summary: Summary
    license: LicenseInfo | None
    source: str
    created: str
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if not any(layer.kind == "weights" for layer in self.layers):
            raise ValueError("the manifest has no weights layer")
        files = [layer.filename for layer in self.layers if layer.filename]
        if len(files) != len(set(files)):
            raise ValueError("two layers claim the same file name")
        unique = set(files)
        for f in files:  # "a" and "a/b": one path cannot be a file and a directory
            parts = f.split("/")
            clash = next(("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) in unique), None)
            if clash is not None:
                raise ValueError(f"layer file {f!r} lies inside {clash!r}, which is another layer's file")
        sizes: dict[str, int] = {}
        for layer in self.layers:  # the store keeps one blob per digest: it cannot have two sizes
            if sizes.setdefault(layer.digest, layer.size) != layer.size:
                raise ValueError(f"digest {layer.digest[:19]} is listed with two sizes ({sizes[layer.digest]} and {layer.size})")

    def layers_of(self, kind: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind == kind]

    @property
    def weights(self) -> Layer:
        """The file the loader opens: the GGUF, or (HF) the first weights file."""
        return self.layers_of("weights")[0]

    def digests(self) -> dict[str, int]:
        """digest → size, each once."""
        return {layer.digest: layer.size for layer in self.layers}

    def size_on_disk(self) -> int:
        return sum(self.digests().values())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        """Strict: unknown keys, bad digests, unsafe file names → ManifestError naming the problem."""
        if not isinstance(d, dict):
            raise ManifestError("the manifest must be a JSON object")
        if d.get("schema") != SCHEMA:
            raise ManifestError(f"manifest schema {d.get('schema')!r} is not {SCHEMA}; update hearth")
        d = dict(d)
        layers = d.get("layers")
        if not isinstance(layers, list):
            raise ManifestError("layers must be a list")
        try:
            d["layers"] = [_strict(Layer, x, f"layer {i}") for i, x in enumerate(layers)]
            d["summary"] = _strict(Summary, d.get("summary"), "summary")
            d["license"] = None if d.get("license") is None else _strict(LicenseInfo, d["license"], "license")
            return _strict(cls, d, "manifest")
        except (TypeError, ValueError, HearthError) as e:
            raise ManifestError(str(e)) from None

    @classmethod
    def from_json(cls, data: bytes | str) -> "Manifest":
        """Parse a manifest file's bytes: at most MAX_BYTES and MAX_DEPTH, or ManifestError."""
        return cls.from_dict(load_json(data))


def load_json(data: bytes | str, max_bytes: int = MAX_BYTES) -> Any:
    """Untrusted manifest JSON (a store file or a bundle's document), size and depth bounded, as ManifestError."""
    try:
        return safejson.loads(data, max_depth=MAX_DEPTH, max_bytes=max_bytes)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, JSONLimitError, too many digits
        raise ManifestError(f"not valid JSON ({e})" if not isinstance(e, safejson.JSONLimitError) else str(e)) from None
