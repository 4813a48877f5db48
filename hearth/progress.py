"""The one place that builds rich progress bars: on stderr (stdout stays the command's output), columns by name.

A column is a short name or a text template:

    ":bar"  the bar            ":count"   done/total         ":elapsed" time elapsed   ":left" time remaining
    ":bytes" bytes done/total  ":speed"   bytes per second   anything else: rich's TextColumn with that template

Callers keep their own small wrappers (what a step advances, when the bar is silent); rich is imported only when a
bar is drawn.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def _column(spec: str):
    from rich import progress as rp

    named = {":bar": rp.BarColumn, ":count": rp.MofNCompleteColumn, ":elapsed": rp.TimeElapsedColumn,
             ":left": rp.TimeRemainingColumn, ":bytes": rp.DownloadColumn, ":speed": rp.TransferSpeedColumn}
    return named[spec]() if spec in named else rp.TextColumn(spec)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def bar(*columns: str, transient: bool = True):
    """A rich `Progress` with these columns, drawn on stderr; use it as a context manager (or start/stop)."""
    from rich.progress import Progress

    return Progress(*(_column(c) for c in columns), console=stderr_console(), transient=transient)


def track(items: Sequence[T] | Iterable[T], description: str, transient: bool = True) -> Iterator[T]:
    """rich's `track` (description, bar, percent, time left) over `items`, on stderr."""
    from rich.progress import track as rich_track

    return rich_track(items, description=description, transient=transient, console=stderr_console())


@contextlib.contextmanager
def phase_bars():
    """progress(label, total) -> advance(n): a bar per phase (or scorer) on a terminal's stderr; None elsewhere, so
    a log or a pipe gets no bar noise. What `hearth guard eval` and `hearth redteam` hand their library calls."""
    if not sys.stderr.isatty():
        yield None
        return
    with bar("{task.description}", ":bar", ":count", ":elapsed", ":left") as p:
        def start(label: str, total: int):
            tid = p.add_task(label, total=total)
            return lambda n: p.advance(tid, n)

        yield start
