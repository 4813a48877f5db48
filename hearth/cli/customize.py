"""Customize a model: `hearth tune, distill, export-weights, export-adapter` (hearth/tune)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.cli.options import Device, ModelArg, Threads, apply_threads, load_model, prepare_process
from hearth.cli.store import print_stored
from hearth.errors import HearthError


DataFile = Annotated[Optional[Path], typer.Option("--data", help="Training data, JSONL: {\"messages\": [...]} or {\"prompt\", \"completion\"} per line ({\"prompt\", \"chosen\", \"rejected\"} for dpo). Required, except with --resume (the run's saved path).")]
OutDir = Annotated[Path, typer.Option("--output", "-o", help="Output directory: adapter/model, log.jsonl, loss.png, checkpoint/.")]
Lr = Annotated[float, typer.Option(help="Peak learning rate (AdamW), > 0.")]
Steps = Annotated[int, typer.Option(help="Optimizer steps (0: --epochs passes over the data).", min=0)]
Epochs = Annotated[float, typer.Option(help="Passes over the training split when --max-steps is 0.", min=0.0)]
BatchSize = Annotated[int, typer.Option(help="Sequences (or packed rows) per micro-batch.", min=1)]
GradAccum = Annotated[int, typer.Option(help="Micro-batches per optimizer step.", min=1)]
MaxLen = Annotated[int, typer.Option(help="Longest sequence in tokens (capped at the model's context).", min=2)]
Warmup = Annotated[int, typer.Option(help="Linear warm-up steps before the cosine decay.", min=0)]
ValFraction = Annotated[float, typer.Option(help="Share of the examples held out for the validation loss.", min=0.0, max=0.99)]
EvalEvery = Annotated[int, typer.Option(help="Validation loss every N steps (0: at the end only).", min=0)]
SaveEvery = Annotated[int, typer.Option(help="Checkpoint every N steps (and at the end).", min=1)]
TrainSeed = Annotated[int, typer.Option(help="Seed of the split, the data order, the adapter's init and dropout.", min=0)]
GradClip = Annotated[float, typer.Option(help="Clip the gradient norm to this (0: off).", min=0.0)]
GradCkpt = Annotated[bool, typer.Option("--grad-checkpointing", help="Recompute each block in backward: less memory, ~30% slower.")]
Pack = Annotated[bool, typer.Option("--pack", help="Pack several examples into each row (each attends only to itself).")]
OnBadLine = Annotated[str, typer.Option(help="Malformed JSONL lines: stop (error naming the line) or skip (warn with their numbers).")]
Overlong = Annotated[str, typer.Option(help="Examples longer than --max-len: truncate or drop (a warning counts them).")]
MaxLineBytes = Annotated[Optional[int], typer.Option(help="Longest JSONL line read, in bytes; a longer line is never read whole: dropped with --overlong drop, else a bad line (default: 192 bytes per --max-len token, at least 1 MiB).", min=1)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --output from its last checkpoint, exactly, with the options saved in it (options given again must agree; --max-steps/--epochs may be raised to extend a finished run). A run killed before its first checkpoint starts over.")]
MemLimit = Annotated[Optional[float], typer.Option(help="Refuse to start if the estimated memory exceeds this many GiB (default: what is free now).", min=0.0)]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]


def _data_options(on_bad_line: str, overlong: str, template: bool, max_line_bytes: int | None = None,
                  val_data: str | None = None):
    from hearth.tune.recipes import DataOptions

    if on_bad_line not in ("stop", "skip"):
        raise HearthError(f"--on-bad-line must be stop or skip, not {on_bad_line!r}")
    if overlong not in ("truncate", "drop"):
        raise HearthError(f"--overlong must be truncate or drop, not {overlong!r}")
    if val_data is not None and not Path(val_data).is_file():
        raise HearthError(f"--val-data {val_data}: no such file")
    return DataOptions(on_bad_line=on_bad_line, overlong=overlong, use_template=template, max_line_bytes=max_line_bytes,
                       val_path=val_data)


def _gib(x: float | None) -> int | None:
    return None if x is None else int(x * (1 << 30))


# Options of a run that its checkpoint does not keep: where and how it runs, what it does after training
_NOT_SAVED = {"model", "teacher", "output", "resume", "merge", "memory_limit", "device", "quiet", "threads"}


def _run_options(ctx: typer.Context, resume: bool) -> dict:
    """The options this run goes with: those typed (or their defaults); with --resume, the ones saved in the
    run's checkpoint, overridden by those typed again, which must agree (checkpoint.resume_options)."""
    from hearth.tune.checkpoint import resume_options, saved_options
    from hearth.tune.train import EXTENDABLE

    opts = {k: (str(Path(v).resolve()) if isinstance(v, Path) else v) for k, v in ctx.params.items() if k not in _NOT_SAVED}
    saved = saved_options(ctx.params["output"]) if resume else None
    if saved is not None:
        # by name: typer may bring its own copy of click, whose enum is not click.core's
        typed = {k: v for k, v in opts.items() if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
        opts = resume_options(saved, typed, EXTENDABLE, overridable=("data",))
    if opts.get("data") is None:
        raise HearthError("--data is required (a JSONL file of training examples)" if not resume else
                          f"--data is required: the run in {ctx.params['output']} has no saved options to resume from")
    return opts


def _report(outcome, what: str) -> None:
    s = outcome.summary()
    val = f", validation loss {s['val_loss']:.4f}" if s["val_loss"] is not None else ""
    print(f"{what} in {outcome.out_dir}: {s['steps']} steps, {s['tokens']:,} tokens, final loss "
          f"{s['final_loss']:.4f}{val} ({s['seconds']:.1f}s); log.jsonl, loss.png, checkpoint/")


def tune(
    ctx: typer.Context,
    model: ModelArg,
    output: OutDir,
    data: DataFile = None,
    method: Annotated[str, typer.Option(help="lora, qlora (4-bit NF4 frozen base), full, or dpo (LoRA on {prompt, chosen, rejected}).")] = "lora",
    lora_r: Annotated[int, typer.Option(help="LoRA rank.", min=1)] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (the update is scaled by alpha / r).", min=0.0)] = 16.0,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the LoRA input.", min=0.0, max=0.99)] = 0.05,
    target_modules: Annotated[str, typer.Option(help="Comma-separated PEFT names: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj, or all.")] = "all",
    lr: Lr = 2e-4,
    warmup_steps: Warmup = 10,
    max_steps: Steps = 0,
    epochs: Epochs = 1.0,
    batch_size: BatchSize = 4,
    grad_accum: GradAccum = 1,
    max_len: MaxLen = 1024,
    pack: Pack = False,
    grad_clip: GradClip = 1.0,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on matrices.", min=0.0)] = 0.0,
    grad_checkpointing: GradCkpt = False,
    val_fraction: ValFraction = 0.05,
    val_data: Annotated[Optional[str], typer.Option(metavar="FILE", help="Validation data of its own (JSONL, as --data), e.g. the .val.jsonl `hearth feedback export` writes; every line of --data then trains (--val-fraction is not used).")] = None,
    eval_every: EvalEvery = 0,
    save_every: SaveEvery = 50,
    seed: TrainSeed = 0,
    beta: Annotated[Optional[float], typer.Option(help="DPO: strength of the pull towards the reference model (default 0.1; only with --method dpo).", min=0.0)] = None,
    template: Annotated[bool, typer.Option(help="Render prompt/completion pairs with the chat template (--no-template: raw prompt + completion + EOS).")] = True,
    on_bad_line: OnBadLine = "stop",
    overlong: Overlong = "truncate",
    max_line_bytes: MaxLineBytes = None,
    resume: Resume = False,
    merge: Annotated[Optional[str], typer.Option(help="Also write the model with the adapter merged into the store under this name.")] = None,
    memory_limit: MemLimit = None,
    device: Device = "cpu",
    dtype: Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16 on CUDA), float32 or bfloat16.")] = "auto",
    quiet: Quiet = False,
    threads: Threads = None,
):
    """Fine-tune MODEL on chat or prompt/completion data (loss on the assistant tokens only).

    Writes a PEFT adapter (lora, qlora, dpo) or a HF model directory (full) into --output.

    Example: hearth tune smollm2 --data examples/chats.jsonl -o my-adapter --epochs 2 --lora-r 16

    --resume continues the run in --output with the options saved in its checkpoint (hearth tune smollm2 -o
    my-adapter --resume); --max-steps or --epochs given higher extend a finished run, its cosine schedule
    recomputed for the new length (as HF Trainer and torchtune do).
    """
    from hearth.tune.lora import LoraConfig
    from hearth.tune.recipes import tune as run_tune
    from hearth.tune.train import TrainConfig

    logging.getLogger("hearth").setLevel(logging.INFO)
    o = _run_options(ctx, resume)
    if o["beta"] is not None and o["method"] != "dpo":
        raise HearthError(f"--beta applies to --method dpo only (this run is --method {o['method']}); leave it out")
    targets = tuple(t.strip() for t in o["target_modules"].split(",") if t.strip())
    cfg = TrainConfig(
        method=o["method"], lora=LoraConfig(o["lora_r"], o["lora_alpha"], o["lora_dropout"], targets), lr=o["lr"],
        warmup_steps=o["warmup_steps"], max_steps=o["max_steps"], epochs=o["epochs"], batch_size=o["batch_size"],
        grad_accum=o["grad_accum"], max_len=o["max_len"], pack=o["pack"], grad_clip=o["grad_clip"],
        weight_decay=o["weight_decay"], grad_checkpointing=o["grad_checkpointing"], val_fraction=o["val_fraction"],
        eval_every=o["eval_every"], save_every=o["save_every"], seed=o["seed"], dpo_beta=0.1 if o["beta"] is None else o["beta"],
    )
    prepare_process(device)
    apply_threads(threads)
    outcome = run_tune(model, o["data"], output, cfg, data=_data_options(o["on_bad_line"], o["overlong"], o["template"], o["max_line_bytes"], o.get("val_data")),
                       device=device, dtype=o["dtype"], resume=resume, progress=not quiet and sys.stderr.isatty(), merge=merge,
                       memory_limit=_gib(memory_limit), options=o)
    _report(outcome, "adapter" if o["method"] != "full" else "model")
    if outcome.merged is not None:
        print_stored("merged into the store as", outcome.merged)


STUDENT_HELP = ("The student: a JSON config for a fresh model (Hugging Face or hearth key names: hidden_size/dim, "
                "num_hidden_layers/n_layers, num_attention_heads/n_heads, num_key_value_heads/n_kv_heads, "
                "intermediate_size/hidden_dim, vocab_size, max_position_embeddings/max_seq_len, rms_norm_eps/norm_eps, "
                "rope_theta, tie_word_embeddings/tie_embeddings, head_dim; every key left out is the teacher's, so {} is "
                "the teacher's shape; see examples/student.json), or a model to start from. It must use the teacher's vocabulary.")


def distill(
    ctx: typer.Context,
    teacher: Annotated[str, typer.Option(help="The teacher model (store name, .gguf, HF directory, smollm2).")],
    output: OutDir,
    student: Annotated[Optional[str], typer.Option(help=STUDENT_HELP)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="JSONL: {\"text\"}, {\"messages\"} or {\"prompt\", \"completion\"} per line. Required, except with --resume.")] = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of teacher and student logits.", min=0.01)] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of the KL term; 1 - alpha weighs the LM loss (0: no teacher).", min=0.0, max=1.0)] = 0.5,
    lr: Lr = 1e-3,
    warmup_steps: Warmup = 10,
    max_steps: Steps = 0,
    epochs: Epochs = 1.0,
    batch_size: BatchSize = 8,
    grad_accum: GradAccum = 1,
    max_len: MaxLen = 512,
    grad_clip: GradClip = 1.0,
    val_fraction: ValFraction = 0.05,
    eval_every: EvalEvery = 0,
    save_every: SaveEvery = 50,
    seed: TrainSeed = 0,
    on_bad_line: OnBadLine = "stop",
    overlong: Overlong = "truncate",
    max_line_bytes: MaxLineBytes = None,
    resume: Resume = False,
    memory_limit: MemLimit = None,
    device: Device = "cpu",
    quiet: Quiet = False,
    threads: Threads = None,
):
    """Distill a teacher into a smaller student (KL on temperature-softened logits mixed with the LM loss).

    Example: hearth distill --teacher smollm2 --student examples/student.json --data examples/corpus.jsonl -o my-student

    examples/student.json: {"num_hidden_layers": 4, "hidden_size": 192, "num_attention_heads": 3,
    "num_key_value_heads": 1, "intermediate_size": 512}; the vocabulary, norm epsilon, RoPE base and context are
    the teacher's. Unknown keys are refused with the list of accepted ones.
    """
    from hearth.tune.recipes import distill as run_distill
    from hearth.tune.train import TrainConfig

    logging.getLogger("hearth").setLevel(logging.INFO)
    if student is not None and Path(student).is_file():
        ctx.params["student"] = str(Path(student).resolve())
    o = _run_options(ctx, resume)
    if o.get("student") is None:
        raise HearthError("--student is required: a JSON student config (e.g. examples/student.json) or a model to start from")
    cfg = TrainConfig(method="full", lr=o["lr"], warmup_steps=o["warmup_steps"], max_steps=o["max_steps"], epochs=o["epochs"],
                      batch_size=o["batch_size"], grad_accum=o["grad_accum"], max_len=o["max_len"], grad_clip=o["grad_clip"],
                      val_fraction=o["val_fraction"], eval_every=o["eval_every"], save_every=o["save_every"], seed=o["seed"])
    prepare_process(device)
    apply_threads(threads)
    outcome = run_distill(teacher, o["student"], o["data"], output, cfg, temperature=o["temperature"], alpha=o["alpha"],
                          data=_data_options(o["on_bad_line"], o["overlong"], True, o["max_line_bytes"]), device=device, resume=resume,
                          progress=not quiet and sys.stderr.isatty(), memory_limit=_gib(memory_limit), options=o)
    _report(outcome, "student")


def export_weights(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="A directory (safetensors) or a .gguf file path.")],
    fmt: Annotated[str, typer.Option("--format", help="safetensors (a Hugging Face directory) or gguf (llama.cpp).")] = "safetensors",
    adapter: Annotated[Optional[Path], typer.Option(help="Merge this LoRA adapter (PEFT format) into the weights first.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="float32 (the default), bfloat16 or float16 weights; with gguf, the same as --quant f32/bf16/f16.")] = None,
    quant: Annotated[str, typer.Option(help="gguf: the weights' type: auto (the base model's own, tensor by tensor: a Q4_1 base gives a Q4_1 file of about its size), q8_0, q4_1, q4_0, f16, bf16 or f32.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace -o if it exists (a directory only if it holds a model).")] = False,
):
    """Write a model's weights for other tools: a HF directory (transformers) or a GGUF file (llama.cpp).

    safetensors are float32 (or --dtype); a GGUF keeps the base model's quantization (--quant to choose), with an
    adapter's update merged into the weights before they are quantized again.
    Example: hearth export-weights smollm2 --adapter out/adapter --format gguf -o my-tuned.gguf
    """
    from hearth.loader import DTYPES
    from hearth.store.common import check_outside_store, human_bytes, refuse_overwrite
    from hearth.tune.export import FORMATS, QUANTS, write_model

    if fmt not in FORMATS:
        raise HearthError(f"--format must be safetensors or gguf, not {fmt!r}")
    if dtype is not None and dtype not in DTYPES:
        raise HearthError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    quant = quant.lower()
    if quant not in QUANTS:
        raise HearthError(f"unknown --quant {quant!r}; choose one of {', '.join(QUANTS)}")
    if quant != "auto" and fmt != "gguf":
        raise HearthError(f"--quant {quant} applies to --format gguf; safetensors take --dtype")
    if quant != "auto" and dtype is not None:
        raise HearthError(f"give --quant or --dtype for a GGUF file, not both (--quant {quant} --dtype {dtype})")
    check_outside_store(output, "-o")
    if fmt == "gguf" and output.is_dir():  # before the minutes of loading and merging
        raise HearthError(f"-o {output} is a directory; give the GGUF file's path, e.g. {output / 'model.gguf'}")
    if output.exists() and (fmt == "gguf" or not output.is_dir() or any(output.iterdir())):
        refuse_overwrite(output, force)
    lm = load_model(model, "cpu", "float32", adapter)
    from hearth.tune.lineage import step_record

    record = step_record("export", model, lm.checkpoint, adapter=adapter)  # a later `hearth release` knows the chain
    path = write_model(lm, fmt, output, dtype=DTYPES[dtype] if dtype else None, quant=quant, force=force,
                       lineage=record)
    if fmt == "gguf":
        from hearth.tune.export import describe_gguf

        print(f"wrote {path} ({describe_gguf(path, lm.checkpoint, quant)})")
    else:
        print(f"wrote {path} (safetensors, {dtype or 'float32'}; {human_bytes(sum(f.stat().st_size for f in path.iterdir()))})")


def export_adapter(
    model: Annotated[str, typer.Argument(help="The base model the adapter was trained on (store name, file, 'smollm2').")],
    adapter: Annotated[Path, typer.Argument(help="A LoRA adapter: a PEFT directory (e.g. from `hearth tune`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .gguf file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace -o if it exists.")] = False,
):
    """Write a LoRA adapter as a llama.cpp GGUF adapter (llama-cli --lora, llama-server --lora, llama-cpp-python
    lora_path), checked against MODEL's shapes.

    Example: hearth export-adapter smollm2 out/adapter -o adapter.gguf
    """
    from hearth.loader import resolve_model
    from hearth.store.common import check_outside_store, refuse_overwrite, replacing
    from hearth.weights import open_checkpoint
    from hearth.weights.adapters.gguf import write_lora_gguf
    from hearth.weights.adapters.peft import read_adapter

    check_outside_store(output, "-o")
    if output.suffix != ".gguf":
        raise HearthError(f"-o {output}: the adapter file's name must end in .gguf")
    if output.is_dir():
        raise HearthError(f"-o {output} is a directory; give the adapter GGUF file's path")
    refuse_overwrite(output, force)
    from hearth.store.lineage import gguf_metadata
    from hearth.tune.lineage import step_record

    ckpt = open_checkpoint(resolve_model(model))
    mc = ckpt.config
    cfg, weights = read_adapter(adapter, mc)
    record = step_record("export-adapter", model, ckpt, adapter=adapter)  # the base and the tune run, for a release
    output.parent.mkdir(parents=True, exist_ok=True)
    with replacing(output, ".gguf") as tmp:
        write_lora_gguf(tmp, cfg, weights, mc, name=adapter.name, metadata=gguf_metadata(record))
    path = output
    print(f"wrote {path} (LoRA r={cfg.r}, alpha={cfg.alpha:g}, {len(weights)} projections; llama.cpp: --lora {path})")
