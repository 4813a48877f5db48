"""What a LoRA adapter is, independent of its file format: PEFT's target-module names mapped onto hearth's
projections, the hyper-parameters (LoraConfig), and the matrix shapes a model of a given config needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from hearth.errors import HearthError

# PEFT/HF module name → (hearth sub-module of a Block, attribute, HF parent module)
TARGETS: dict[str, tuple[str, str, str]] = {
    "q_proj": ("attention", "wq", "self_attn"),
    "k_proj": ("attention", "wk", "self_attn"),
    "v_proj": ("attention", "wv", "self_attn"),
    "o_proj": ("attention", "wo", "self_attn"),
    "gate_proj": ("feed_forward", "w1", "mlp"),
    "up_proj": ("feed_forward", "w3", "mlp"),
    "down_proj": ("feed_forward", "w2", "mlp"),
}
ALL_TARGETS = tuple(TARGETS)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA hyper-parameters. `targets` uses PEFT's names; "all" means all seven projections."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default=ALL_TARGETS)
    # the blocks that carry the adapter (PEFT's layers_to_transform); None: every block
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise HearthError(f"LoRA rank must be positive, got {self.r}")
        if self.alpha <= 0:
            raise HearthError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise HearthError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        targets = tuple(self.targets)
        if targets == ("all",) or targets == ("all-linear",):
            targets = ALL_TARGETS
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or not targets:
            raise HearthError(f"unknown LoRA target module(s) {unknown or '(none)'}; choose from {', '.join(ALL_TARGETS)}")
        object.__setattr__(self, "targets", tuple(dict.fromkeys(targets)))
        if self.layers is not None:
            layers = tuple(sorted(set(self.layers)))
            if not layers or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in layers):
                raise HearthError(f"LoRA layers must be block indices >= 0, got {self.layers!r}")
            object.__setattr__(self, "layers", layers)

    def carries(self, layer: int) -> bool:
        """Whether block `layer` carries the adapter."""
        return self.layers is None or layer in self.layers

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def expected_shapes(mc, target: str, r: int) -> dict[str, tuple[int, int]]:
    """The shapes of lora_A and lora_B for `target` on a model of config `mc` (hearth.config.ModelConfig)."""
    q, kv = mc.n_heads * mc.head_dim, mc.n_kv_heads * mc.head_dim
    out_in = {"q_proj": (q, mc.dim), "k_proj": (kv, mc.dim), "v_proj": (kv, mc.dim), "o_proj": (mc.dim, q),
              "gate_proj": (mc.hidden_dim, mc.dim), "up_proj": (mc.hidden_dim, mc.dim), "down_proj": (mc.dim, mc.hidden_dim)}
    out, inp = out_in[target]
    return {"lora_A": (r, inp), "lora_B": (out, r)}
