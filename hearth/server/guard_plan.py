"""Where `hearth serve --guard` runs its guard: on the served engine, or in an engine of its own beside it.

A guard that is a LoRA adapter of the served model's own weights (the default guard on `hearth serve smollm2`) is
added to the served engine's adapters: its requests are rows of the same batches as other traffic, the weights are
loaded once, and the prefix cache (salted per adapter) keeps the guard's fixed instructions after the first check.
Any other guard (an adapter of another base, or a whole guard model such as Llama Guard 3 1B) gets its own model
and engine. The options are checked (policy read, guard model found) before the port is taken.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from hearth.engine.llm_engine import EngineConfig
from hearth.errors import HearthError
from hearth.guard.load import ADAPTER_NAME, GuardSource, resolve_guard
from hearth.guard.policy import Policy, load_policy
from hearth.loader import resolve_named
from hearth.server.guarding import ServerGuard


def _digest(path: Path) -> str:
    if path.name.startswith("sha256-"):  # a store blob is named by its digest
        return path.name.removeprefix("sha256-")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def same_weights(a: Path, b: Path) -> bool:
    """Whether two model paths hold the same weights: the same file or directory, or two files with the same bytes
    (the packaged smollm2 and its copy in the store). Files are hashed only when their sizes match."""
    a, b = Path(a).resolve(), Path(b).resolve()
    if a == b:
        return True
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    return _digest(a) == _digest(b)


@dataclass(frozen=True)
class GuardPlan:
    source: GuardSource
    base_path: Path  # the guard's model (an adapter's base), resolved
    policy: Policy
    holdback: int

    @classmethod
    def make(cls, ref: str, policy: Path | None, holdback: int) -> GuardPlan:
        """HearthError (one line) for a malformed policy, a missing guard or a guard model that is not there."""
        pol = load_policy(policy)
        source = resolve_guard(ref)
        base = resolve_named(source.base).path
        if not base.exists():
            raise HearthError(f"--guard {ref}: guard model not found (give 'default', a guard adapter directory, or a "
                              "model: a .gguf file, a model directory or a store name)")
        return cls(source, base, pol, holdback)

    @property
    def adapter_name(self) -> str:
        return ADAPTER_NAME

    def shares(self, lm) -> bool:
        """Whether the guard is an adapter of the served model `lm`'s own weights (then it runs on its engine)."""
        return self.source.adapter is not None and same_weights(self.base_path, lm.checkpoint.path)

    def engine_config(self, served: EngineConfig) -> EngineConfig:
        """The guard's own engine: the served engine's settings, with the guard adapter as its only one."""
        adapters = {ADAPTER_NAME: str(self.source.adapter)} if self.source.adapter is not None else {}
        return dataclasses.replace(served, adapters=adapters)

    def build(self, engine) -> ServerGuard:
        """The guard over `engine` (the served one, or the guard's own). GuardTemplateError: the model cannot carry
        the Llama Guard format."""
        adapter = ADAPTER_NAME if self.source.adapter is not None else None
        return ServerGuard.on(engine, self.policy, adapter, holdback=self.holdback)

    def describe(self, shared: bool) -> str:
        where = "on the served engine (adapter rows)" if shared else "in its own engine"
        p = self.policy
        return (f"{self.source.describe()} {where}; policy {p.name!r}: check {p.check}, threshold {p.threshold:g}, "
                f"{len(p.categories)} categories, hold-back {self.holdback} characters")
