"""`hearth audit verify|show`: check the hash chain of the server's audit log, and read its last entries.

The log is $HEARTH_HOME/audit/audit.jsonl unless PATH names another (with its `.head` file beside it). `verify`
exits 1 when it finds a problem, one line each, so a cron job or a release script can stop on it. The library calls
are hearth.records.audit.verify and tail; the server writes the log with hearth.records.audit.AuditLog.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.errors import HearthError
from hearth.textsafe import json_safe, terminal_safe

app = typer.Typer(help="The audit log: one hash-chained entry per served request (no content).",
                  no_args_is_help=True, add_completion=False)

LogPath = Annotated[Optional[Path], typer.Argument(help="The audit log (default: $HEARTH_HOME/audit/audit.jsonl).",
                                                   show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
_WIDEST = 48  # characters a table cell shows (--json prints the whole value)


@app.callback()
def _group() -> None:
    """The audit log: one hash-chained entry per served request (no content)."""


def _path(path: Path | None) -> Path:
    from hearth.records.audit import default_path
    from hearth.store.common import default_home

    return path if path is not None else default_path(default_home())


@app.command()
def verify(path: LogPath = None, as_json: AsJson = False) -> None:
    """Check every entry's hash and link, and the head file: exit 0 when the chain is intact, else name each
    edited, removed, reordered, inserted or malformed line (and a cut-off end) and exit 1."""
    from hearth.records.audit import verify_log

    path = _path(path)
    v = verify_log(path)
    if as_json:
        doc = {"path": str(path), "entries": v.entries, "intact": not v.problems,
               "last": {"seq": v.last[0], "hash": v.last[1]} if v.last else None,
               "problems": [dataclasses.asdict(p) for p in v.problems]}
        print(json_safe(json.dumps(doc, indent=2, ensure_ascii=False)))
    elif v.problems:
        for p in v.problems:
            print(terminal_safe(p))
    elif v.last is None:
        print("verified: 0 entries (the log is empty)")
    else:
        print(f"verified: {v.entries} entries, chain intact (last seq {v.last[0]}, hash {v.last[1][:12]}…)")
    if v.problems:
        raise typer.Exit(1)


@app.command()
def show(
    path: LogPath = None,
    last: Annotated[int, typer.Option("--last", "-n", min=1, max=100_000, help="How many entries to show.")] = 20,
    as_json: AsJson = False,
) -> None:
    """Print the last entries of the log as a table (read from its end; nothing is checked: see `verify`)."""
    path = _path(path)
    if not path.is_file():
        raise HearthError(f"audit log {path} not found")
    rows = tail(path, last)
    if as_json:
        print(json_safe(json.dumps(rows, indent=2, ensure_ascii=False)))
        return
    if not rows:
        print(f"the audit log {terminal_safe(path)} is empty")
        return
    fields = list(dict.fromkeys(k for e in rows if e for k in e if k not in ("seq", "time", "prev", "hash")))
    header = ["seq", "time", *fields, "hash"]
    table = [header] + [[_cell(e.get(k)) for k in header[:-1]] + [_cell(e["hash"][:12])] if e else
                        ["?", "(not an entry)"] for e in rows]
    widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _cell(value: object) -> str:
    """A value read from the file as one terminal-safe cell: escapes for control characters (and for lone
    surrogates, which no terminal encoding can write), long text cut."""
    if value is None:
        return "-"
    text = json.dumps(value) if isinstance(value, bool) else str(value)
    text = terminal_safe(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    return text if len(text) <= _WIDEST else text[:_WIDEST - 1] + "…"


def tail(path: Path, n: int) -> list[dict | None]:
    """The last `n` lines of the log as entries (None for a line that is not one), oldest first. Reads backwards
    from its end as it was between two appends (a brief shared flock), at most n + 1 lines' worth of the size cap."""
    from hearth.records.audit import MAX_LINE, parse_entry

    def entry(raw: bytes) -> dict | None:
        try:
            return parse_entry(raw[:-1]) if len(raw) <= MAX_LINE and raw.endswith(b"\n") else None
        except ValueError:
            return None

    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)  # the server appends under LOCK_EX: the lines before this size are whole
        try:
            pos = os.fstat(f.fileno()).st_size
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
        budget, buf, newlines = (n + 1) * (MAX_LINE + 1), b"", 0
        while pos > 0 and newlines <= n and len(buf) < budget:
            step = min(pos, 1 << 16)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            buf, newlines = chunk + buf, newlines + chunk.count(b"\n")
    *whole, rest = buf.split(b"\n")
    lines = [x + b"\n" for x in whole][1 if pos > 0 else 0:] + ([rest] if rest else [])  # the first may be cut
    return [entry(raw) for raw in lines[-n:]] if n > 0 else []
