"""`hearth serve`'s records (hearth/records, hearth/server/records.py): the capture, the cost ledger, the audit log,
built from the serve command's options before the model loads, so that a bad path fails at once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hearth.errors import HearthError

log = logging.getLogger("hearth")

DEFAULT_CAPTURE = "default"  # `--capture` without --capture-db


@dataclass(frozen=True)
class RecordOptions:
    capture: str | None = None  # None: off; "default": $HEARTH_HOME/capture.sqlite; else a path
    capture_all: bool = False
    redact: bool = True
    capture_days: float | None = None
    ledger: bool = True
    audit: bool = True
    watts_per_core: float | None = None
    audit_durable: bool = True


def capture_path(value: str) -> Path:
    from hearth.store.common import default_home

    return default_home() / "capture.sqlite" if value == DEFAULT_CAPTURE else Path(value).expanduser()


def build_records(opts: RecordOptions, device: str = "cpu"):
    """The ServerRecords for `opts` (None when every part is off). Opening the files checks them: a capture path that
    is not a SQLite database, or an audit log whose chain is damaged, stops the server before it loads a model."""
    from hearth.server.records import ServerRecords
    from hearth.store.common import default_home

    if opts.capture is None and (opts.capture_all or opts.capture_days is not None or not opts.redact):
        raise HearthError("--capture-all, --capture-days and --no-redact apply to --capture; add --capture")
    records = ServerRecords(capture_all=opts.capture_all)
    home = default_home()
    try:
        if opts.capture is not None:
            from hearth.records.capture import CaptureStore

            redactor = None
            if opts.redact:
                from hearth.records.redact import Redactor

                redactor = Redactor()
                log.info("capture: redacting %s before anything is stored", ", ".join(redactor.available))
            else:
                log.warning("capture: --no-redact: personal data in requests is stored as sent")
            path = capture_path(opts.capture)
            records.capture = CaptureStore(path, redact=redactor.redact_json if redactor else None,
                                           retention_days=opts.capture_days)
            log.info("capture: %s (%s)%s", path, "every chat completion" if opts.capture_all else "requests with store: true",
                     f", kept {opts.capture_days:g} days" if opts.capture_days is not None else "")
        if opts.ledger:
            from hearth.records.energy import detect_meter
            from hearth.records.ledger import Accountant, Ledger, default_path

            meter = detect_meter(device, **({} if opts.watts_per_core is None else {"watts_per_core": opts.watts_per_core}))
            records.ledger = Ledger(default_path(home))
            records.accountant = Accountant(records.ledger, meter)
            log.info("ledger: %s (energy: %s%s)", default_path(home), meter.source,
                     ", an estimate from CPU time" if meter.estimated else "")
        if opts.audit:
            from hearth.records.audit import AuditLog
            from hearth.records.audit import default_path as audit_path

            records.audit = AuditLog(audit_path(home), durable=opts.audit_durable)
    except BaseException:
        records.close()
        raise
    if records.capture is None and records.ledger is None and records.audit is None:
        records.close()
        return None
    return records


def model_digest(lm) -> str | None:
    """The served weights' digest, kept beside each captured completion (the store's when the model is stored)."""
    from hearth.store import lineage

    try:
        return lineage.model_digest(lm.checkpoint.path)
    except OSError:
        return None
