"""LoRA: a frozen linear plus a trainable low-rank update, swapped into hearth's Transformer from outside.

    y = base(x) + (alpha / r) * B(A(dropout(x)))        A: (r, in), B: (out, r), B starts at zero

Target modules are named the PEFT / Hugging Face way (q_proj ... down_proj) and mapped onto hearth's
modules (the table and LoraConfig: weights/adapters/targets.py), so an adapter trained by hearth is a PEFT adapter
and the other way round (peft_io.py).
Initialisation follows PEFT (A: Kaiming-uniform with a=sqrt(5), B: zeros), so a fresh adapter is a no-op.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from hearth.errors import HearthError
from hearth.weights.adapters.targets import TARGETS, LoraConfig


class LoRALinear(nn.Module):
    """A frozen `base` (nn.Linear or a quantized linear with in/out_features) plus a trainable low-rank update.

    The adapter weights may have another dtype than the base (fp32 adapters on a bf16 or 4-bit base):
    the update is computed in the adapter's dtype and added in the base output's dtype.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        ref = base.weight if isinstance(getattr(base, "weight", None), Tensor) else next(base.buffers())
        device = ref.device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if not self.enabled:
            return y
        dt = self.lora_A.weight.dtype
        return y + (self.lora_B(self.lora_A(self.dropout(x.to(dt)))) * self.scaling).to(y.dtype)

    def delta_weight(self) -> Tensor:
        """The update as a dense (out, in) matrix, fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling


def _base_weight(module: nn.Module) -> Tensor:
    """The dense weight of an nn.Linear or of a quantized linear (dequantized)."""
    if hasattr(module, "dequantize"):  # hearth.tune.quant.NF4Linear
        return module.dequantize()
    if hasattr(module, "dequantized"):  # hearth.fast.quant.GGUFLinear (a GGUF file run natively)
        return module.dequantized()
    return module.weight


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """hearth module path (layers.N.attention.wq) → LoRALinear."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, cfg: LoraConfig, dtype: torch.dtype = torch.float32) -> list[str]:
    """Freeze every parameter of `model`, wrap the target projections of every block (of cfg.layers) in LoRALinear.

    Returns the hearth paths of the wrapped modules. Applying twice is an error (adapters do not stack).
    """
    if lora_modules(model):
        raise HearthError("this model already carries a LoRA adapter; merge it or load the base model again")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    if cfg.layers is not None and cfg.layers[-1] >= len(model.layers):
        raise HearthError(f"LoRA layers {list(cfg.layers)} name a block the model lacks (it has {len(model.layers)})")
    for i, block in enumerate(model.layers):
        if not cfg.carries(i):
            continue
        for target in cfg.targets:
            parent_name, attr, _ = TARGETS[target]
            parent = getattr(block, parent_name)
            setattr(parent, attr, LoRALinear(getattr(parent, attr), cfg.r, cfg.alpha, cfg.dropout, dtype))
            wrapped.append(f"layers.{i}.{parent_name}.{attr}")
    return wrapped


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The parameters that train (requires_grad), by their names in `model`."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the frozen base alone (DPO's reference model) without copying any weights."""
    mods = list(lora_modules(model).values())
    before = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield
    finally:
        for m, e in zip(mods, before):
            m.enabled = e


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and unwrap it: afterwards `model` is a plain Transformer.

    A quantized base is dequantized first (the merged weight is dense, in the adapter's dtype or the
    model's float dtype).
    """
    for name, m in lora_modules(model).items():
        parent_path, attr = name.rsplit(".", 1)
        parent = model.get_submodule(parent_path)
        w = _base_weight(m.base)
        dtype = w.dtype if w.dtype.is_floating_point else torch.float32
        merged = nn.Linear(m.in_features, m.out_features, bias=False, device=w.device, dtype=dtype)
        with torch.no_grad():
            merged.weight.copy_((w.float() + m.delta_weight().to(w.device)).to(dtype))
        merged.weight.requires_grad_(False)
        setattr(parent, attr, merged)
    return model


def dense_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """hearth state-dict names → dense tensors, LoRA merged in and quantized weights dequantized,
    without changing `model` (for writers: GGUF, HF directory, the store)."""
    out: dict[str, Tensor] = {}
    loras = lora_modules(model)
    skip = tuple(f"{n}." for n in loras)
    for name, t in model.state_dict().items():
        if name.startswith(skip):
            continue
        out[name] = t
    for name, m in loras.items():
        w = _base_weight(m.base)
        dtype = w.dtype if w.dtype.is_floating_point else torch.float32
        out[f"{name}.weight"] = (w.float() + m.delta_weight().to(w.device)).to(dtype).detach()
    # quantized linears outside LoRA (QLoRA with a subset of targets): dequantize
    for name, mod in model.named_modules():
        if hasattr(mod, "dequantize") and not name.startswith(skip) and name not in loras:
            for k in [k for k in out if k.startswith(f"{name}.")]:
                del out[k]
            out[f"{name}.weight"] = mod.dequantize().detach()
    return out
