"""Byte progress bars for copying and hashing big files: on stderr when it is a terminal, silent otherwise."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from hearth.store.blobs import Advance

MIN_BYTES = 16 << 20  # smaller files finish before a bar is worth drawing


class Progress:
    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    @contextlib.contextmanager
    def task(self, label: str, total: int) -> Iterator[Advance]:
        if not self.enabled or total < MIN_BYTES:
            yield lambda n: None
            return
        from hearth import progress

        with progress.bar("{task.description}", ":bar", ":bytes", ":speed", ":left") as bar:
            from rich.markup import escape

            from hearth.textsafe import terminal_safe

            # the label names a file from a bundle or model directory: shown as written, never as markup or escapes
            tid = bar.add_task(escape(terminal_safe(label)), total=total)
            yield lambda n: bar.advance(tid, n)


SILENT = Progress(enabled=False)
