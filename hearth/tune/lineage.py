"""The lineage records of the steps under hearth/tune: a fine-tune or distillation (written into its summary.json),
a merge into the store and an export of weights or of an adapter (written into what they write). The record's
shape, and how it is read back from a model, are in hearth/store/lineage.py.

Energy is recorded only where it was measured (None here: no power meter is read on a CPU machine; a GPU run could
fill it from NVML)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hearth.store import lineage as L
from hearth.store.lineage import license_id, model_digest, sha256_file  # noqa: F401 - the names callers use

MAX_SUMMARY_BYTES = 16 << 20

__all__ = ["lineage", "license_id", "model_digest", "sha256_file", "step_record", "adapter_record"]


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
            tokens: int | None, seconds: float | None, energy_kwh: float | None = None, step: str = "tune",
            parent: dict | None = None) -> dict:
    """A training step's record: its base, its data files (digest and rows), settings, tokens, time."""
    record = {
        "step": step,
        "base": {"ref": base_ref, "digest": model_digest(base_path), "license": base_license},
        "data": [{"path": str(p), "sha256": sha256_file(p), "rows": _rows(p)} for p in data_files],
        "settings": _jsonable(settings),
        "tokens": tokens, "seconds": None if seconds is None else round(seconds, 2), "energy_kwh": energy_kwh,
        "builder": L.builder(), "finished": L.now(),
    }
    if parent is not None:
        record["parent"] = parent
    return record


def adapter_record(adapter: Path | None) -> dict | None:
    """The tune run's record an adapter directory holds (its summary.json "lineage"), None where there is none."""
    if adapter is None:
        return None
    from hearth import safejson

    summary = Path(adapter) / "summary.json"
    if not summary.is_file() or summary.stat().st_size > MAX_SUMMARY_BYTES:
        return None
    try:  # the summary holds the loss curve too: bounded, as any file handed to us
        whole = safejson.loads(summary.read_bytes(), max_depth=L.MAX_DEPTH, max_bytes=MAX_SUMMARY_BYTES)
    except ValueError:
        return None
    tuned = whole.get("lineage") if isinstance(whole, dict) else None
    return tuned if isinstance(tuned, dict) else None


def step_record(step: str, base_ref: str, ckpt, settings: Any = None, seconds: float | None = None,
                adapter: Path | None = None, tuned: dict | None = None) -> dict:
    """store.lineage.step with the tune record of the adapter merged in: `tuned`, or read from the `adapter`
    directory's summary.json."""
    tuned = tuned if tuned is not None else adapter_record(adapter)
    if tuned is not None:
        tuned = {**({"path": str(adapter)} if adapter is not None else {}), **tuned}
    return L.step(step, base_ref, ckpt, None if settings is None else _jsonable(settings), seconds, tuned)

