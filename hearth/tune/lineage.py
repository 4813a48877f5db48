"""What a fine-tune came from, written into its output so that a release made weeks later knows the whole chain
(`hearth release` reads it): the base model's digest and licence, the data files' digests and row counts, the
settings, tokens and time. Energy is recorded only where it was measured (None here: no power meter is read on a
CPU machine; a GPU run could fill it from NVML).

    "lineage": {"base": {"ref", "digest", "license"}, "data": [{"path", "sha256", "rows"}], "settings": {...},
                "tokens", "seconds", "energy_kwh", "builder": "hearth X.Y.Z", "finished": ISO 8601 UTC}
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any


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
        h.update(str(p.relative_to(path)).encode() + b"\0" + sha256_file(p).encode())
    return "sha256:" + h.hexdigest()


def _rows(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def lineage(base_ref: str, base_path: Path, base_license: str | None, data_files: list[Path], settings: Any,
            tokens: int | None, seconds: float | None, energy_kwh: float | None = None) -> dict:
    from importlib.metadata import version

    return {
        "base": {"ref": base_ref, "digest": model_digest(base_path), "license": base_license},
        "data": [{"path": str(p), "sha256": sha256_file(p), "rows": _rows(p)} for p in data_files],
        "settings": _jsonable(settings),
        "tokens": tokens, "seconds": None if seconds is None else round(seconds, 2), "energy_kwh": energy_kwh,
        "builder": f"hearth {version('hearth')}",
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def license_id(ckpt) -> str | None:
    """The base checkpoint's normalised licence id (apache-2.0, llama3.2, ...), None where none travels with it."""
    from hearth.tune.export import _license

    info = _license(ckpt)
    return info.id if info is not None else None


def export_lineage(base_ref: str, base_path: Path, adapter: Path | None) -> dict:
    """The lineage an exported model carries: its base (name, digest) and, where the adapter merged into it came from
    `hearth tune`, that run's record (its summary.json)."""
    import json

    record: dict = {"base": {"ref": base_ref, "digest": model_digest(base_path)}}
    summary = adapter / "summary.json" if adapter is not None else None
    if summary is not None and summary.is_file() and summary.stat().st_size < (16 << 20):
        try:
            tuned = json.loads(summary.read_text(encoding="utf-8")).get("lineage")
        except (ValueError, UnicodeDecodeError, AttributeError):
            tuned = None
        if isinstance(tuned, dict):
            record["adapter"] = {"path": str(adapter), **tuned}
    return record


def gguf_lineage(record: dict) -> dict:
    """GGUF metadata for `record`: llama.cpp's general.base_model.* keys and the whole record as JSON text."""
    import json

    return {"general.base_model.count": 1, "general.base_model.0.name": str(record["base"]["ref"]),
            "hearth.lineage": json.dumps(record, sort_keys=True)}
