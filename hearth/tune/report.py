"""What a training run shows and leaves behind: a progress bar, a JSON-lines log, a loss-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hearth import progress
from hearth.fsutil import atomic_open, save_png


class Progress:
    """A rich progress bar on stderr (silent when `enabled` is False), e.g.

        lora ━━━━━━━━━━━╸━━━━━━ 12/40 loss 2.1034 · 1,840 tok/s · elapsed 0:00:15 · 0:01:03 left
    """

    def __init__(self, total: int, done: int = 0, enabled: bool = True, description: str = "training"):
        self.bar = None
        if not enabled:
            return
        self.bar = progress.bar("{task.description}", ":bar", ":count", "loss {task.fields[loss]} ·",
                                "{task.fields[tps]} tok/s ·", "elapsed", ":elapsed", "·", ":left", "left", transient=False)
        self.task = self.bar.add_task(description, total=total, completed=done, loss="-", tps="-")
        self.bar.start()

    def update(self, step: int, loss: float, tokens_per_s: float, val_loss: float | None = None) -> None:
        if self.bar is not None:
            shown = f"{loss:.4f}" + (f" (val {val_loss:.4f})" if val_loss is not None else "")
            self.bar.update(self.task, completed=step, loss=shown, tps=f"{tokens_per_s:,.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class JsonLog:
    """One JSON object per optimizer step in `log.jsonl`; rewritten from the checkpoint's history on resume,
    so steps redone after a crash are not logged twice."""

    def __init__(self, path: Path, history: list[dict[str, Any]]):
        self.path = path
        # a fixed temporary name: checkpoint.unsaved_run recognises log.tmp as what a killed run left
        with atomic_open(path, "w", durable=False, tmp=path.with_suffix(".tmp"), encoding="utf-8") as f:
            for rec in history:
                f.write(json.dumps(rec) + "\n")

    def write(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


def plot_loss(history: list[dict[str, Any]], path: Path, title: str = "training loss") -> Path | None:
    """Training (and validation) loss against optimizer step, written atomically as a PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display; never opens a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="train", linewidth=1)
    val = [r for r in history if r.get("val_loss") is not None]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path)
