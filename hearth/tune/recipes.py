"""The library calls behind `hearth tune` and `hearth distill`: load, prepare, check memory, train, write.

    tune(model, data, out, TrainConfig)   LoRA / QLoRA / full SFT, or DPO with LoRA
        OUT/adapter_config.json + adapter_model.safetensors   (lora, qlora, dpo: a PEFT adapter)
        OUT/model/                                             (full: a HF directory)
        OUT/log.jsonl, OUT/loss.png, OUT/checkpoint/state.pt, OUT/summary.json
    distill(teacher, student, data, out)  a student trained on teacher logits; OUT/model/ (HF directory)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from hearth.errors import HearthError
from hearth.tune import data as D
from hearth.tune.checkpoint import checkpoint_path, unsaved_run
from hearth.tune.lora import apply_lora
from hearth.tune.memory import check_memory, largest_micro_batch
from hearth.tune.objectives import DPO, SFT, Distill
from hearth.tune.peft_io import save_adapter
from hearth.tune.quant import quantize_blocks
from hearth.tune.train import TrainConfig, TrainResult, train

log = logging.getLogger("hearth")


@dataclass
class DataOptions:
    on_bad_line: str = "stop"  # "stop" | "skip"
    overlong: str = "truncate"  # "truncate" | "drop"
    use_template: bool = True  # prompt/completion through the chat template (False: raw text + EOS)
    max_line_bytes: int | None = None  # longest JSONL line read (None: data.line_cap(max_len))
    val_path: str | Path | None = None  # validation data of its own (e.g. `hearth feedback export`'s .val.jsonl)


@dataclass
class Outcome:
    out_dir: Path
    result: TrainResult
    n_train: int
    n_val: int
    bad_lines: int
    truncated: int
    dropped: int
    merged: Any = None  # the store Result of --merge

    def summary(self) -> dict[str, Any]:
        r = self.result
        return {
            "steps": r.steps, "final_loss": r.final_loss, "val_loss": r.val_loss, "tokens": r.tokens,
            "seconds": round(r.seconds, 2), "train_examples": self.n_train, "val_examples": self.n_val,
            "bad_lines": self.bad_lines, "truncated": self.truncated, "dropped": self.dropped,
        }


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_ids[0] if tokenizer.eos_ids else 0)


def train_dtype(dtype: str, device: str) -> str:
    """"auto" trains in float32 on a CPU (bf16 on CUDA): never on natively quantized GGUF blocks, which have
    no gradient path; QLoRA quantizes the frozen base itself."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "float32"


def _max_len(cfg: TrainConfig, model) -> int:
    return min(cfg.max_len, model.config.max_seq_len)


def prepare(loaded, cfg: TrainConfig) -> None:
    """Freeze / quantize / wrap the loaded model for the method."""
    model = loaded.model
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return
    if cfg.method == "qlora":
        quantize_blocks(model)
    torch.manual_seed(cfg.seed)  # the adapter's initial A matrices
    apply_lora(model, cfg.lora, dtype=torch.float32)


# What a run writes into its output directory (see the module docstring)
RUN_FILES = ("checkpoint", "adapter_model.safetensors", "adapter_config.json", "model", "log.jsonl", "summary.json")


def check_output_dir(out: Path, resume: bool) -> bool:
    """Refuse, before any work, an output that would overwrite something: a file, another run's results (unless
    resuming it), or a place inside hearth's store. Returns whether to resume from a checkpoint: False for
    `resume` on a run killed before its first checkpoint was complete, which starts over (nothing in it to keep)."""
    from hearth.store.common import check_outside_store

    if out.exists() and not out.is_dir():
        raise HearthError(f"output {out} exists and is not a directory")
    check_outside_store(out, "output")
    saved = checkpoint_path(out).exists()
    if not resume:
        if saved:
            raise HearthError(f"{out} already holds a checkpoint; continue it with --resume, or choose another output directory")
        if unsaved_run(out):
            raise HearthError(f"{out} holds a run that stopped before its first checkpoint was complete (nothing in it to "
                              "keep); run the same command with --resume to start it over, or choose another output directory")
        held = [f for f in RUN_FILES if (out / f).exists()]
        if held:
            raise HearthError(f"{out} already holds {held[0]} (from another run); choose another output directory")
        return False
    if saved:
        return True
    if unsaved_run(out):
        log.warning("%s: the run stopped before its first checkpoint was complete; starting it over", out)
        return False
    raise HearthError(f"nothing to resume: {out} holds no checkpoint; run the same command without --resume")


def tune(
    model_ref: str, data_path: str | Path, out_dir: str | Path, cfg: TrainConfig, *, data: DataOptions | None = None,
    device: str = "cpu", dtype: str = "auto", resume: bool = False, progress: bool = True, merge: str | None = None,
    memory_limit: int | None = None, on_step: Callable[[int], None] | None = None, loaded=None,
    options: dict[str, Any] | None = None,
) -> Outcome:
    """Fine-tune `model_ref` on `data_path` (JSONL) into `out_dir`. See the module docstring for the outputs.

    `memory_limit` (bytes) replaces what is free as the bound of the memory check; `options` (the command's
    options, plain values) are saved in the checkpoint for `--resume`."""
    from hearth.loader import load

    data = data or DataOptions()
    if merge is not None:
        from hearth.store import Store
        from hearth.store.manifest import check_name

        check_name(merge)
        # checked before training, not after: a store pull replaces a model of the same name (its blobs
        # garbage-collected), and a typo such as --merge smollm2 must not cost the base model or the run
        if Store().exists(merge):
            raise HearthError(f"a model named {merge!r} is already in the store; `hearth rm {merge}` first or choose another --merge name")
    out = Path(out_dir)
    resume = check_output_dir(out, resume)
    if loaded is None:
        loaded = load(model_ref, device=device, dtype=train_dtype(dtype, device), progress=progress)
    if cfg.method == "full" and loaded.dtype != torch.float32:
        log.warning("full fine-tuning in %s: AdamW updates may underflow; float32 is safer", loaded.dtype)
    kind = "dpo" if cfg.method == "dpo" else "sft"
    max_len = _max_len(cfg, loaded.model)
    ds = D.load_dataset(data_path, loaded.tokenizer, loaded.chat_template, kind, max_len, data.overlong,
                        data.on_bad_line, data.use_template, data.max_line_bytes)
    if data.val_path is not None:  # a split made beforehand: every line of data_path trains
        val_ds = D.load_dataset(data.val_path, loaded.tokenizer, loaded.chat_template, kind, max_len, data.overlong,
                                data.on_bad_line, data.use_template, data.max_line_bytes)
        train_items, val_items = ds.items, val_ds.items
    else:
        train_items, val_items = D.split(ds.items, cfg.val_fraction, cfg.seed)
    prepare(loaded, cfg)
    cfg = dataclasses.replace(cfg, max_len=max_len)
    check_memory(loaded.model, largest_micro_batch(train_items, cfg), cfg, loaded.device, kind, memory_limit)
    pad = _pad_id(loaded.tokenizer)
    objective = DPO(loaded.device, cfg.dpo_beta, pad) if kind == "dpo" else SFT(loaded.device, pad, cfg.pack)
    result = train(loaded.model, objective, train_items, val_items, cfg, out, resume=resume, progress=progress,
                   on_step=on_step, options=options)
    base = str(model_ref)
    if cfg.method == "full":
        from hearth.tune.export import write_model

        target = out / "model"
        if target.exists():
            import shutil

            shutil.rmtree(target)
        write_model(loaded, "safetensors", target, note=f"Fine-tuned by hearth (full) from {base}.")
    else:
        save_adapter(loaded.model, cfg.lora, out, base_model=base)
    outcome = Outcome(out, result, len(train_items), len(val_items), len(ds.bad_lines), ds.truncated, ds.dropped)
    from hearth.store import lineage as L
    from hearth.tune.lineage import license_id, lineage, step_record

    files = [Path(data_path)] + ([Path(data.val_path)] if data.val_path is not None else [])
    record = lineage(base, loaded.checkpoint.path, license_id(loaded.checkpoint), files, cfg,
                     result.tokens, result.seconds, step="tune", parent=L.of_checkpoint(loaded.checkpoint))
    if cfg.method == "full":  # the model written is the run's output: it carries the record itself
        (out / "model" / L.FILE).write_text(L.to_json(record), encoding="utf-8")
    if merge is not None:
        from hearth.tune.export import merge_into_store

        outcome.merged = merge_into_store(loaded, merge, note=f"{base} with a LoRA adapter ({cfg.method}) merged by hearth.",
                                          lineage=step_record("merge", base, loaded.checkpoint, tuned=record))
    (out / "summary.json").write_text(json.dumps({"model": base, "method": cfg.method, **outcome.summary(),
                                                  "lineage": record}, indent=2) + "\n")
    return outcome


def student_from(ref: str, teacher, device: torch.device, dtype: torch.dtype, seed: int):
    """A student: a model (store name, path) to start from, or a JSON student config (student.py: Hugging Face or
    hearth key names, every key left out the teacher's) for a fresh one."""
    from hearth.loader import load
    from hearth.model import Transformer
    from hearth.tune.student import describe, student_config

    p = Path(ref)
    if p.suffix == ".json" and p.is_file():
        cfg = student_config(p, teacher.config)
        log.info("student: %s (teacher: %s)", describe(cfg), describe(teacher.config))
        torch.manual_seed(seed)
        model = Transformer(cfg)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() >= 2:
                    torch.nn.init.normal_(param, std=0.02)
        model = model.to(device=device, dtype=dtype)
    else:
        model = load(ref, device=str(device), dtype=str(dtype).removeprefix("torch.")).model
    if model.config.vocab_size != teacher.config.vocab_size:
        raise HearthError(f"the student's vocabulary ({model.config.vocab_size}) differs from the teacher's "
                          f"({teacher.config.vocab_size}); a student must use the teacher's tokenizer")
    for prm in model.parameters():
        prm.requires_grad_(True)
    return model


def distill(
    teacher_ref: str, student_ref: str, data_path: str | Path, out_dir: str | Path, cfg: TrainConfig, *,
    temperature: float = 2.0, alpha: float = 0.5, data: DataOptions | None = None, device: str = "cpu",
    dtype: str = "auto", resume: bool = False, progress: bool = True, memory_limit: int | None = None, teacher=None,
    options: dict[str, Any] | None = None,
) -> Outcome:
    """Train a student on the teacher's softened logits (alpha > 0) mixed with the LM loss; alpha=0 is plain
    training from the same start (the baseline). Writes OUT/model (a HF directory with the teacher's tokenizer)."""
    import copy

    from hearth.loader import load
    from hearth.tune.export import write_model

    data = data or DataOptions()
    resume = check_output_dir(Path(out_dir), resume)
    if teacher is None:
        teacher = load(teacher_ref, device=device, dtype=train_dtype(dtype, device), progress=progress)
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    max_len = _max_len(cfg, teacher.model)
    ds = D.load_dataset(data_path, teacher.tokenizer, teacher.chat_template, "lm", max_len, data.overlong,
                        data.on_bad_line, data.use_template, data.max_line_bytes)
    train_items, val_items = D.split(ds.items, cfg.val_fraction, cfg.seed)
    student = student_from(student_ref, teacher.model, teacher.device, teacher.dtype, cfg.seed)
    cfg = dataclasses.replace(cfg, method="full", max_len=min(max_len, student.config.max_seq_len))
    check_memory(student, largest_micro_batch(train_items, cfg), cfg, teacher.device, "distill", memory_limit)
    objective = Distill(teacher.model, teacher.device, temperature, alpha, _pad_id(teacher.tokenizer))
    result = train(student, objective, train_items, val_items, cfg, out_dir, resume=resume, progress=progress,
                   label="distill", options=options)
    out = Path(out_dir)
    student_loaded = copy.copy(teacher)
    student_loaded.model = student
    target = out / "model"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    write_model(student_loaded, "safetensors", target, note=f"Distilled by hearth from {teacher_ref} (T={temperature}, alpha={alpha}).")
    outcome = Outcome(out, result, len(train_items), len(val_items), len(ds.bad_lines), ds.truncated, ds.dropped)
    from hearth.store import lineage as L
    from hearth.tune.lineage import license_id, lineage

    # the teacher is the base whose licence reaches the student (Llama 2/3: using its outputs to improve another
    # model is restricted; `hearth license check --distill-into` says how)
    record = lineage(teacher_ref, teacher.checkpoint.path, license_id(teacher.checkpoint), [Path(data_path)],
                     {**dataclasses.asdict(cfg), "temperature": temperature, "alpha": alpha, "student": student_ref},
                     result.tokens, result.seconds, step="distill", parent=L.of_checkpoint(teacher.checkpoint))
    (target / L.FILE).write_text(L.to_json(record), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps({"teacher": teacher_ref, "student": student_ref, **outcome.summary(),
                                                  "lineage": record}, indent=2) + "\n")
    return outcome
