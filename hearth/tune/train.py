"""The training loop, nanoGPT-style: one function, every step visible.

    for each optimizer step:
        lr ← cosine schedule with linear warm-up
        for each of `grad_accum` micro-batches: (summed loss / units in the whole step).backward()
        clip the gradient norm, AdamW step, zero the gradients
        every `eval_every` steps: validation loss;  every `save_every` steps: an atomic checkpoint

A checkpoint holds the trainable weights, AdamW's moments, the step, the number of micro-batches
consumed (the data position: batches are a pure function of (seed, index)), the RNG states (dropout)
and the log so far; `resume=True` restores all of it, so a killed run resumed ends with the same
weights, bit for bit, as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from hearth.errors import HearthError, Interrupted
from hearth.tune.checkpoint import checkpoint_path, load_checkpoint, save_atomic
from hearth.tune.data import BatchStream, PrefPair
from hearth.tune.lora import LoraConfig
from hearth.tune.report import JsonLog, Progress, plot_loss

METHODS = ("lora", "qlora", "full", "dpo")
# What a resumed run may change: its length (a finished run continues to the new end; see `lr_at`)
EXTENDABLE = ("max_steps", "epochs")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run. Stored in each checkpoint; a resume must use the same values."""

    method: str = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    lr: float = 2e-4
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    max_steps: int = 0  # 0: as many as `epochs` passes over the training split take
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    max_len: int = 1024
    pack: bool = False
    grad_clip: float = 1.0  # 0: off
    weight_decay: float = 0.0
    grad_checkpointing: bool = False
    val_fraction: float = 0.05
    eval_every: int = 0  # 0: at the end only
    save_every: int = 50
    seed: int = 0
    dpo_beta: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise HearthError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        for k in ("batch_size", "grad_accum", "save_every"):
            if getattr(self, k) < 1:
                raise HearthError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(self, k)}")
        for k in ("warmup_steps", "max_steps", "eval_every", "seed"):
            if getattr(self, k) < 0:
                raise HearthError(f"--{k.replace('_', '-')} must not be negative, got {getattr(self, k)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise HearthError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise HearthError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.epochs <= 0 and self.max_steps == 0:
            raise HearthError("give --epochs > 0 or --max-steps")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise HearthError("--grad-clip and --weight-decay must not be negative")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora"]["targets"] = list(d["lora"]["targets"])
        d["lora"]["layers"] = None if d["lora"]["layers"] is None else list(d["lora"]["layers"])
        return d


def total_steps(cfg: TrainConfig, micro_batches_per_epoch: int) -> int:
    """Optimizer steps of a run: --max-steps, or --epochs passes over the training split."""
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * micro_batches_per_epoch / cfg.grad_accum))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over warmup_steps, then cosine down to lr * min_lr_ratio at `total`.

    A pure function of (step, total): a run resumed with a higher --max-steps (or --epochs) follows the cosine
    recomputed for the new total, as Hugging Face's Trainer and torchtune do when resumed with more steps; the
    learning rate rises from where the shorter schedule had brought it to the longer schedule's value there."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))


def fingerprint(items: list) -> str:
    """A digest of the training token ids, so a resume on other data is refused."""
    h = hashlib.sha256()
    for it in items:
        for ex in (it.chosen, it.rejected) if isinstance(it, PrefPair) else (it,):
            h.update(repr((ex.ids, ex.mask)).encode())
    return h.hexdigest()[:16]


def model_fingerprint(model) -> str:
    """A digest of the base model (a slice of every tensor but LoRA's own), taken before any training: a resume on
    another model of the same shape (a merged fine-tune, another release) is refused."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        head = t.detach().reshape(-1)[:64].cpu()
        h.update(name.encode() + (head.float() if head.is_floating_point() else head).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class TrainResult:
    steps: int
    history: list[dict[str, Any]]
    final_loss: float | None
    val_loss: float | None
    seconds: float
    tokens: int


def _rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise HearthError("nothing to train: every parameter is frozen")
    decay = [p for n, p in named if p.dim() >= 2 and cfg.weight_decay > 0]
    rest = [p for n, p in named if not (p.dim() >= 2 and cfg.weight_decay > 0)]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


class StopAfterStep:
    """Ctrl-C during training: the step under way finishes, a checkpoint is saved and the run stops (`Interrupted`),
    so no progress since the last save is lost. A second Ctrl-C stops at once. Main thread only (signal handlers)."""

    def __init__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle) or signal.default_int_handler

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.release()
        print("\nhearth: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def release(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def train(
    model,
    objective,
    train_items: list,
    val_items: list,
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    label: str | None = None,
    options: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the parameters of `model` that require grad. `objective` is an SFT/DPO/Distill (objectives.py).

    Writes into out_dir: checkpoint/state.pt (every save_every steps and at the end), log.jsonl, loss.png.
    `on_step(step)` runs after each step's checkpoint (tests use it to simulate a crash). `label` names the run
    on its progress bar and plot (default: the method). `options` (plain values: the command's options) is
    saved in every checkpoint, so `--resume` can continue without them (checkpoint.resume_options).
    A resume may raise max_steps / epochs (EXTENDABLE): a finished run continues to the new end.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_file = checkpoint_path(out)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = _optimizer(model, cfg)
    packed = cfg.pack and not isinstance(train_items[0], PrefPair)
    stream = BatchStream(train_items, cfg.batch_size, cfg.max_len, packed, cfg.seed, getattr(objective, "pad_id", 0))
    per_epoch = stream.micro_batches_per_epoch()
    total = total_steps(cfg, per_epoch)
    data_fp = fingerprint(train_items)
    model_fp = model_fingerprint(model)
    step, consumed, history, tokens_seen = 0, 0, [], 0

    if resume:
        state = load_checkpoint(out)
        now = cfg.to_dict()
        diff = [f"{k}: saved {state['config'].get(k)!r}, given {now[k]!r}" for k in now
                if k not in EXTENDABLE and state["config"].get(k) != now[k]]
        if diff:
            raise HearthError(f"the checkpoint in {out} was made with other settings ({'; '.join(diff)}); resume with the same options")
        if total < state["step"]:
            raise HearthError(f"the run in {out} is already at step {state['step']}, past this run's end ({total} steps); "
                              f"give --max-steps {state['step']} or more to continue it")
        if state["data"] != data_fp:
            raise HearthError(f"the checkpoint in {out} was made on other training data; resume with the same --data")
        if state.get("model", model_fp) != model_fp:  # (checkpoints from before this check have none)
            raise HearthError(f"the checkpoint in {out} was made on another base model; resume with the same model")
        if set(state["weights"]) != set(trainable):
            raise HearthError(f"the checkpoint in {out} holds other trainable weights than this model; resume with the same model")
        with torch.no_grad():
            for n, t in state["weights"].items():
                trainable[n].copy_(t)
        opt.load_state_dict(state["optimizer"])
        step, consumed, history, tokens_seen = state["step"], state["consumed"], state["history"], state["tokens"]
        _set_rng_state(state["rng"])
    else:
        if ckpt_file.exists():
            raise HearthError(f"{out} already holds a checkpoint; continue it with --resume, or choose another output directory")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

    def save() -> None:
        save_atomic({
            "config": cfg.to_dict(), "data": data_fp, "model": model_fp, "step": step, "consumed": consumed, "tokens": tokens_seen,
            "weights": {n: p.detach().cpu().clone() for n, p in trainable.items()},
            "optimizer": opt.state_dict(), "rng": _rng_state(), "history": history, "options": dict(options or {}),
        }, ckpt_file)

    log = JsonLog(out / "log.jsonl", history)
    label = label or cfg.method
    bar = Progress(total, step, enabled=progress, description=label)
    params = list(trainable.values())
    t_start = time.perf_counter()
    # a run killed after its final checkpoint resumes at step == total: the loop is skipped, the loss measured is kept
    val_loss = history[-1].get("val_loss") if history else None
    stop = StopAfterStep()
    try:
        model.train()
        while step < total:
            t0 = time.perf_counter()
            lr = lr_at(step, total, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            micro = [stream.rows(consumed + i) for i in range(cfg.grad_accum)]
            units = sum(objective.count(rows) for rows in micro)
            loss_total, step_tokens = 0.0, 0
            for rows in micro:
                loss_sum, ntok = objective.loss(model, rows, cfg.grad_checkpointing)
                (loss_sum / max(units, 1)).backward()
                loss_total += float(loss_sum.detach())
                step_tokens += ntok
            consumed += cfg.grad_accum
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip > 0 else None
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += step_tokens
            dt = time.perf_counter() - t0
            rec: dict[str, Any] = {
                "step": step, "loss": loss_total / max(units, 1), "lr": lr, "grad_norm": grad_norm,
                "tokens": step_tokens, "tokens_per_s": step_tokens / dt if dt > 0 else 0.0,
                "epoch": round(consumed / per_epoch, 4), "seconds": round(dt, 4),
            }
            if val_items and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
                model.eval()
                val_loss = objective.eval_loss(model, val_items, cfg.batch_size)
                model.train()
                rec["val_loss"] = val_loss
            history.append(rec)
            log.write(rec)
            bar.update(step, rec["loss"], rec["tokens_per_s"], rec.get("val_loss"))
            if step % cfg.save_every == 0 or step == total:
                save()
            if on_step is not None:
                on_step(step)
            if stop.requested and step < total:
                if step % cfg.save_every:
                    save()
                raise Interrupted(f"stopped at step {step}/{total}; the checkpoint in {out} holds it: run the same "
                                  "command with --resume to continue")
    finally:
        stop.release()
        bar.close()
        model.eval()
        plot_loss(history, out / "loss.png", f"{label}: loss per step")
    return TrainResult(step, history, history[-1]["loss"] if history else None, val_loss,
                       time.perf_counter() - t_start, tokens_seen)
