"""`hearth capture purge` and `hearth feedback export`: what `hearth serve --capture` kept, deleted on request or
turned into fine-tuning data (hearth/records/capture.py, feedback.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.errors import HearthError

DbArg = Annotated[Optional[str], typer.Argument(metavar="[DB]", help="The capture database (default: $HEARTH_HOME/capture.sqlite, what `hearth serve --capture` writes).")]

capture_app = typer.Typer(help="What `hearth serve --capture` keeps: delete it on request.", no_args_is_help=True,
                          add_completion=False)
feedback_app = typer.Typer(help="Turn captured completions and their feedback into fine-tuning data.",
                           no_args_is_help=True, add_completion=False)


@capture_app.callback()
def _capture() -> None:
    """What `hearth serve --capture` keeps: delete it on request."""


@feedback_app.callback()
def _feedback() -> None:
    """Turn captured completions and their feedback into fine-tuning data."""


def parse_when(text: str, option: str) -> float:
    """An ISO date (midnight UTC) or date-time (UTC unless it names a zone) as epoch seconds; one-line errors."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise HearthError(f"{option} {text!r}: give a date (2026-12-01) or a date and time (2026-12-01T14:30)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def _open(db: str | None):
    from hearth.cli.serve_records import capture_path
    from hearth.records.capture import CaptureStore

    path = capture_path(db or "default")
    if not path.is_file():
        raise HearthError(f"no capture database at {path}: `hearth serve --capture` writes one")
    return CaptureStore(path)


@capture_app.command()
def purge(
    db: DbArg = None,
    before: Annotated[Optional[str], typer.Option(metavar="DATE", help="Delete what was captured before DATE (UTC): retention.")] = None,
    ids: Annotated[Optional[list[str]], typer.Option("--id", metavar="ID", help="Delete this completion (chatcmpl-...) and its feedback: a data subject's request. Repeatable.")] = None,
):
    """Delete captured completions (with their metadata and feedback) for good: deleted rows are overwritten in the
    file and the write-ahead log is emptied.

    Example: hearth capture purge --before 2026-11-01; hearth capture purge --id chatcmpl-1b2c...
    """
    if before is None and not ids:
        raise HearthError("nothing to purge: give --before DATE or --id ID")
    cutoff = parse_when(before, "--before") if before is not None else None
    store = _open(db)
    try:
        n = store.purge(before=cutoff, ids=tuple(ids or ()))
        left = store.count()
    finally:
        store.close()
    print(f"deleted {n} captured completion{'s' * (n != 1)}; {left} remain{'s' * (left == 1)} in {store.path}")


@feedback_app.command("export")
def export_cmd(
    db: DbArg = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The training data file (.jsonl); the validation lines go to NAME.val.jsonl beside it.")] = Path("feedback.jsonl"),
    fmt: Annotated[str, typer.Option("--format", help="sft: chats ending in a liked answer or a user's correction; dpo: corrected answers as preference pairs (correction chosen, the model's answer rejected).")] = "sft",
    min_score: Annotated[float, typer.Option(help="sft: the score from which the model's own answer counts as liked (1: thumbs up).")] = 1.0,
    since: Annotated[Optional[str], typer.Option(metavar="DATE", help="Only completions captured from DATE (UTC) on.")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of the examples kept for validation (by a hash of each, so it is stable).", min=0.0, max=0.9)] = 0.1,
):
    """Write captured completions that got feedback as data `hearth tune` reads (deduplicated, split).

    Example: hearth feedback export --format sft -o fixes.jsonl, then
    hearth tune smollm2 --data fixes.jsonl --val-data fixes.val.jsonl -o fixed
    """
    from hearth.records.feedback import export
    from hearth.store.common import check_outside_store

    check_outside_store(output, "-o")
    cutoff = parse_when(since, "--since") if since is not None else None
    store = _open(db)
    try:
        done = export(store.records(cutoff), fmt, output, min_score=min_score, val_fraction=val_fraction)
    finally:
        store.close()
    val = f" and {done.n_val} to {done.val}" if done.val else ""
    print(f"wrote {done.n_train} {fmt} examples to {done.train}{val} (from {done.considered} captured completions, "
          f"{done.with_feedback} with feedback; {done.duplicates} duplicates left out)")
    if done.n_train:
        extra = f" --val-data {done.val}" if done.val else ""
        method = " --method dpo" if fmt == "dpo" else ""
        print(f"next: hearth tune MODEL --data {done.train}{extra}{method} -o ADAPTER")
