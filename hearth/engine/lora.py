"""LoRA adapters served beside their base model (vLLM's multi-LoRA serving, `hearth serve --adapter NAME=DIR`).

Every request names the base model or one adapter; one engine step may hold rows of several. The base weights stay
as they were loaded (4-bit GGUF blocks, fused q|k|v and gate|up, ...); each projection that some adapter targets is
wrapped in a `BatchedLoRA` that adds, for each adapter present in the step, the low-rank update of that adapter's
rows only:

    y = base(x);   y[rows_a, part] += s_a * (x[rows_a] @ A_a^T) @ B_a^T      for each adapter a in the step

A fused projection (q|k|v) carries one update per part it fuses (q_proj, k_proj, v_proj), written into that part's
columns. Steps with no adapter rows cost nothing more than before (the wrappers see no groups). On a CPU with GGUF
weights the native whole-token decode step holds the adapters too (`register_native`: the same stacked updates,
applied inside hearth's kernel), so decode steps with adapter rows stay on it; other steps with adapter rows run the
engine's eager path (CUDA graphs and the Triton step hold the base weights only).

Written by hand rather than taken from PEFT: PEFT applies one adapter to a whole batch (or loops over sub-batches
through the full model); the engine mixes requests of different adapters in every step.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from hearth.errors import HearthError
from hearth.weights.adapters.peft import read_adapter
from hearth.weights.adapters.targets import TARGETS

log = logging.getLogger("hearth")

# hearth module (attribute of a block's attention / feed_forward) -> the PEFT targets it computes, in column order
FUSED: dict[str, tuple[str, ...]] = {"wqkv": ("q_proj", "k_proj", "v_proj"), "w13": ("gate_proj", "up_proj")}
_SUBMODULE: dict[str, str] = {"wqkv": "attention", "w13": "feed_forward"}
_ATTR = {target: attr for target, (_, attr, _) in TARGETS.items()}


@dataclass(frozen=True)
class _Update:
    """One adapter's low-rank update of one part of a projection: columns [start, end) += scale * x A^T B^T."""

    start: int
    end: int
    a: Tensor  # (r, in)
    b: Tensor  # (part_out, r)
    scale: float


class BatchedLoRA(nn.Module):
    """A projection plus the updates of every served adapter that targets it, applied to the rows of each adapter.

    An adapter's updates of all the parts it targets run as two products: x @ A^T with its parts' A stacked
    (parts*r, in), then @ B^T with B block-diagonal over the parts (out, parts*r; zero where a part is not
    targeted), scale folded in. Per step and adapter that is 2 products and one scatter-add per projection.
    """

    def __init__(self, base: nn.Module, served: ServedAdapters):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.updates: dict[int, list[_Update]] = {}  # adapter index -> its updates of this projection
        self._served = served  # (not a sub-module: the groups of the step live there)
        self._stacked: dict[int, tuple[Tensor, Tensor]] = {}  # adapter index -> (A stacked, B block-diagonal)

    def _pair(self, index: int, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
        pair = self._stacked.get(index)
        if pair is None or pair[0].dtype != dtype:
            ups = self.updates.get(index)
            if not ups:
                return None
            a = torch.cat([u.a for u in ups])
            b = a.new_zeros(self.out_features, a.shape[0])
            col = 0
            for u in ups:
                r = u.a.shape[0]
                b[u.start : u.end, col : col + r] = u.b * u.scale
                col += r
            pair = self._stacked[index] = (a.to(dtype).contiguous(), b.to(dtype).t().contiguous())
        return pair

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        groups = self._served.groups
        if not groups:
            return y
        x2, y2 = x.reshape(-1, self.in_features), y.reshape(-1, self.out_features)
        for index, rows in groups:
            pair = self._pair(index, y2.dtype)
            if pair is None:
                continue
            a, bt = pair
            if rows is None:  # every row of the step
                y2 += (x2.to(a.dtype) @ a.t()) @ bt
            else:
                y2.index_add_(0, rows, (x2.index_select(0, rows).to(a.dtype) @ a.t()) @ bt)
        return y


class ServedAdapters:
    """The adapters a server offers, by name, wired into `model`'s projections. Index 0 is the base model."""

    def __init__(self, model: nn.Module, adapters: dict[str, str | Path]):
        self.names: list[str] = [""] + list(adapters)
        self.paths = {name: Path(p) for name, p in adapters.items()}
        self.groups: list[tuple[int, Tensor | None]] = []  # this step: (adapter index, its token rows or None: all)
        if any(isinstance(m, BatchedLoRA) for m in model.modules()):
            raise HearthError("this model already carries served adapters (another engine's); load the model again")
        device = model.device
        self._sites: list[tuple[nn.Module, str, BatchedLoRA]] = []  # (parent, attribute, wrapper)
        for index, name in enumerate(self.names[1:], start=1):
            cfg, weights = read_adapter(self.paths[name], model.config)
            for (layer, target), (a, b) in weights.items():
                sub_name, attr, _ = TARGETS[target]
                parent = getattr(model.layers[layer], sub_name)
                module_attr, start, end = self._locate(parent, sub_name, target, model.config)
                wrapper = getattr(parent, module_attr)
                if not isinstance(wrapper, BatchedLoRA):
                    wrapper = BatchedLoRA(wrapper, self)
                    setattr(parent, module_attr, wrapper)
                    self._sites.append((parent, module_attr, wrapper))
                wrapper.updates.setdefault(index, []).append(
                    _Update(start, end, a.to(device, torch.float32), b.to(device, torch.float32), cfg.scaling))
            log.info("adapter %s: %s (r=%d, alpha=%g, %s)", name, self.paths[name], cfg.r, cfg.alpha, ", ".join(cfg.targets))

    @staticmethod
    def _locate(parent: nn.Module, sub_name: str, target: str, mc) -> tuple[str, int, int]:
        """(attribute of the module computing `target`, first column, end column) in `parent`."""
        attr = _ATTR[target]
        for fused, parts in FUSED.items():
            if _SUBMODULE[fused] == sub_name and target in parts and getattr(parent, fused, None) is not None:
                q, kv = mc.n_heads * mc.head_dim, mc.n_kv_heads * mc.head_dim
                widths = {"q_proj": q, "k_proj": kv, "v_proj": kv, "gate_proj": mc.hidden_dim, "up_proj": mc.hidden_dim}
                start = sum(widths[p] for p in parts[: parts.index(target)])
                return fused, start, start + widths[target]
        module = getattr(parent, attr, None)
        if module is None:
            raise HearthError(f"the model has no {sub_name}.{attr} to apply {target} to")
        return attr, 0, module.out_features

    def register_native(self, model, decoder) -> bool:
        """Hand every adapter's updates to the native whole-token CPU step (hearth/fast/cpu_decode.py), so decode
        steps holding adapter rows stay on it. False (nothing registered) where the model's products are not the
        fused four the native step runs."""
        per_layer = []
        for layer in model.layers:
            att, ff = layer.attention, layer.feed_forward
            mods = [att.wqkv, att.wo, ff.w13, ff.w2]
            if any(m is None for m in mods[::2]):
                return False
            per_layer.append(mods)
        for index in range(1, len(self.names)):
            updates = []
            for mods in per_layer:
                for m in mods:
                    pair = m._pair(index, torch.float32) if isinstance(m, BatchedLoRA) else None
                    updates.append(pair)  # (A stacked [k, in], B^T block-diagonal [k, out])
            if decoder.add_lora(updates) != index:
                raise RuntimeError("the native step numbered the adapters differently")
        return True

    @classmethod
    def applied(cls, model: nn.Module, adapter: str | Path, decoder=None) -> ServedAdapters:
        """One adapter on every row, for good (`hearth run --adapter` on the fast path): the base weights stay as
        loaded (4-bit blocks, fused products) and, on a CPU, the native decode step carries the update too."""
        served = cls(model, {Path(adapter).name: adapter})
        served.groups = [(1, None)]
        dec = decoder  # the loaded model's whole-step CPU decoder (LoadedModel.decoder), if any
        if dec is not None and served.register_native(model, dec):
            dec.adapter = 1
        return served

    def index(self, name: str | None) -> int:
        """The adapter index of a request's adapter name (None or "": the base model)."""
        if not name:
            return 0
        try:
            return self.names.index(name)
        except ValueError:
            raise HearthError(f"no adapter named {name!r} is served (adapters: {', '.join(self.names[1:]) or 'none'})") from None

    def set_rows(self, row_adapters: list[tuple[int, int, int]], device: torch.device) -> bool:
        """Group a step's token rows by adapter: (first row, row count, adapter index) per scheduled sequence.
        True if any row uses an adapter."""
        by: dict[int, list[int]] = {}
        for first, n, index in row_adapters:
            if index:
                by.setdefault(index, []).extend(range(first, first + n))
        total = sum(n for _, n, _ in row_adapters)
        self.groups = [(index, None if len(rows) == total else torch.tensor(rows, dtype=torch.long, device=device))
                       for index, rows in by.items()]  # None: all rows, no gather or scatter
        return bool(self.groups)

    def clear(self) -> None:
        self.groups = []

    @contextlib.contextmanager
    def base_only(self):
        """The base projections back in place of the wrappers for a while: for recording the fast paths (CUDA graphs,
        hearth's Triton step), which run base-only steps and check that their modules are plain linears."""
        for parent, attr, wrapper in self._sites:
            setattr(parent, attr, wrapper.base)
        try:
            yield
        finally:
            for parent, attr, wrapper in self._sites:
                setattr(parent, attr, wrapper)
