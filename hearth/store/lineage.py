"""Lineage: what a model came from, carried with it so that a release made weeks later knows the whole chain.

Each step that makes a model writes one record (`hearth tune`/`distill` into summary.json, `export-weights`,
`quantize` and `tune --merge` into the model itself, `export-adapter` into the adapter GGUF):

    {"step": "tune" | "distill" | "export" | "merge" | "quantize",
     "base": {"ref", "digest", "license"},          the model this step started from
     "data": [{"path", "sha256", "rows"}],          training steps only
     "settings": {...}, "tokens", "seconds", "energy_kwh", "builder": "hearth X.Y.Z", "finished": ISO 8601 UTC,
     "adapter": {...record of the tune run...},     a merge or export of an adapter
     "parent": {...record the base carried...}}     the base's own lineage, when it had one

A GGUF carries the record as JSON text under `hearth.lineage` (beside llama.cpp's `general.base_model.*`); a
Hugging Face directory as `lineage.json`. The store keeps it as a `lineage` layer, so it travels in bundles too.

The record is read from files anyone can hand us: `parse` bounds its size and depth and returns None for anything
that is not a JSON object, so a bad record costs the lineage, never the model."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from hearth import safejson

KEY = "hearth.lineage"  # GGUF metadata key
FILE = "lineage.json"  # in a Hugging Face directory
MAX_BYTES = 256 << 10
MAX_DEPTH = 32  # a chain nests ~3 levels a step: ten steps and their settings fit
CHAIN_STEPS = 16


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_digest(path: Path) -> str:
    """sha256 of a model file, or of a directory's weight and config files in name order."""
    path = Path(path)
    if path.is_file():
        return "sha256:" + sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q.suffix in (".safetensors", ".json", ".gguf")):
        if p.name == FILE:  # the record describes the weights; it is not part of them
            continue
        h.update(str(p.relative_to(path)).encode() + b"\0" + sha256_file(p).encode())
    return "sha256:" + h.hexdigest()


def builder() -> str:
    from importlib.metadata import version

    return f"hearth {version('hearth')}"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def license_info(ckpt):
    """The licence that travels with a checkpoint (store.license.LicenseInfo), None where none does."""
    from hearth.store import license as lic

    try:
        if ckpt.format == "gguf":
            return lic.from_gguf_metadata(ckpt.metadata)
        return lic.from_hf_dir(ckpt.path if ckpt.path.is_dir() else ckpt.path.parent)
    except Exception:  # noqa: BLE001 - an unreadable README costs the licence, not the step
        return None


def license_id(ckpt) -> str | None:
    """The checkpoint's normalised licence id (apache-2.0, llama3.2, ...), None where none travels with it."""
    info = license_info(ckpt)
    return info.id if info is not None else None


def base(ref: str, ckpt) -> dict:
    """The `base` entry for a step that starts from checkpoint `ckpt` (opened from `ref`)."""
    return {"ref": ref, "digest": model_digest(ckpt.path), "license": license_id(ckpt)}


def step(name: str, base_ref: str, ckpt, settings: dict | None = None, seconds: float | None = None,
         adapter: dict | None = None) -> dict:
    """The record of a step that makes a model from `ckpt` (opened from `base_ref`) without training data: its base,
    the tune record of an adapter merged in, and the base's own lineage as `parent`."""
    record: dict = {"step": name, "base": base(base_ref, ckpt)}
    if settings is not None:
        record["settings"] = settings
    if seconds is not None:
        record["seconds"] = round(seconds, 2)
    record.update(builder=builder(), finished=now())
    if adapter is not None:
        record["adapter"] = adapter
    parent = of_checkpoint(ckpt)
    if parent is not None:
        record["parent"] = parent
    return record


def parse(data: str | bytes | None) -> dict | None:
    """A lineage record from untrusted text; None for anything else (too big, too deep, not a JSON object)."""
    if data is None or len(data) > MAX_BYTES:
        return None
    try:
        record = safejson.loads(data, max_depth=MAX_DEPTH, max_bytes=MAX_BYTES)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def of_checkpoint(ckpt) -> dict | None:
    """The record a checkpoint carries: a GGUF's `hearth.lineage`, a Hugging Face directory's lineage.json."""
    if ckpt.format == "gguf":
        value = ckpt.metadata.get(KEY)
        return parse(value) if isinstance(value, str) else None
    directory = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    return of_file(directory / FILE)


def of_file(path: Path) -> dict | None:
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            return None
        return parse(path.read_bytes())
    except OSError:
        return None


def to_json(record: dict) -> str:
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


def gguf_metadata(record: dict) -> dict:
    """GGUF metadata for `record`: llama.cpp's general.base_model.* keys and the whole record as JSON text."""
    return {"general.base_model.count": 1, "general.base_model.0.name": str((record.get("base") or {}).get("ref")),
            KEY: json.dumps(record, sort_keys=True)}


def chain(record: dict | None) -> list[dict]:
    """The records of `record`'s chain, newest first: the step itself, then the adapter it merged (a tune run) and
    the lineage its base carried, and theirs in turn (at most CHAIN_STEPS)."""
    out: list[dict] = []
    seen: set[str] = set()
    todo = [record] if isinstance(record, dict) else []
    while todo and len(out) < CHAIN_STEPS:
        r = todo.pop(0)
        key = json.dumps({k: v for k, v in r.items() if k != "path"}, sort_keys=True, default=str)
        if key in seen:  # a merge's base lineage is also its tune run's parent: once
            continue
        seen.add(key)
        out.append(r)
        todo.extend(x for x in (r.get("adapter"), r.get("parent")) if isinstance(x, dict))
    return out


def training(record: dict | None) -> dict | None:
    """The newest training record (one with data files) in `record`'s chain, its fields checked (a record may come
    from anyone's file): what a model card's training section, the EU summary and the provenance describe."""
    found = next((r for r in chain(record) if isinstance(r.get("data"), list)), None)
    if found is None:
        return None

    def text(v):
        return v if isinstance(v, str) else None

    def number(v):
        return v if isinstance(v, int | float) and not isinstance(v, bool) else None

    b = found.get("base") if isinstance(found.get("base"), dict) else {}
    data = [{"path": d["path"], "sha256": d["sha256"], "rows": d["rows"]} for d in found["data"]
            if isinstance(d, dict) and isinstance(d.get("path"), str) and isinstance(d.get("sha256"), str)
            and isinstance(d.get("rows"), int) and not isinstance(d.get("rows"), bool)]
    return {"step": text(found.get("step")) or "tune",
            "base": {"ref": text(b.get("ref")), "digest": text(b.get("digest")), "license": text(b.get("license"))},
            "data": data, "settings": found["settings"] if isinstance(found.get("settings"), dict) else {},
            "tokens": number(found.get("tokens")), "seconds": number(found.get("seconds")),
            "energy_kwh": number(found.get("energy_kwh")), "builder": text(found.get("builder")) or "hearth",
            "finished": text(found.get("finished"))}


RELATIONS = {"quantize": "quantized", "merge": "merge", "tune": "finetune", "distill": "finetune"}


def relation(record: dict | None) -> str | None:
    """Hugging Face's base_model_relation of a model to its chain's first base: quantized only when every step
    was a quantization; merge when an adapter was merged on the way; else finetune."""
    steps = chain(record)
    if not steps:
        return None
    names = [str(r.get("step")) for r in steps]
    if any(n == "merge" or isinstance(r.get("adapter"), dict) for n, r in zip(names, steps)):
        return "merge"
    if all(n == "quantize" for n in names):
        return "quantized"
    return "finetune"


def root(record: dict | None) -> dict | None:
    """The `base` of the chain's first step: the model everything started from ({"ref", "digest", ...})."""
    steps = chain(record)
    b = steps[-1].get("base") if steps else None
    return b if isinstance(b, dict) and isinstance(b.get("ref"), str) else None


def describe(record: dict | None) -> str:
    """One line for `hearth show`: `quantize Q8_0 ← merge ← tune sft on data.jsonl (200 rows) ← smollm2`."""
    parts = []
    for r in chain(record):
        step = str(r.get("step") or ("tune" if isinstance(r.get("data"), list) else "export"))
        settings = r.get("settings") if isinstance(r.get("settings"), dict) else {}
        detail = settings.get("qtype") or settings.get("method") or ""
        data = r.get("data") if isinstance(r.get("data"), list) else []
        files = ", ".join(f"{Path(str(d.get('path'))).name} ({d.get('rows')} rows)" for d in data if isinstance(d, dict))
        parts.append(" ".join(str(x) for x in (step, detail, f"on {files}" if files else "") if x))
    last = chain(record)[-1] if parts else None
    root = (last or {}).get("base") if last else None
    if isinstance(root, dict) and root.get("ref"):
        parts.append(str(root["ref"]))
    return " ← ".join(parts)
