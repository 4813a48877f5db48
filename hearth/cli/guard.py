"""`hearth guard check|train|eval`: classify text with a Llama Guard-format guard, make one, measure one."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.cli.guard_eval import guard_eval
from hearth.cli.options import Threads, apply_threads, prepare_process
from hearth.errors import HearthError

app = typer.Typer(help="A Llama Guard-style safety classifier: check text, train the guard, evaluate it.",
                  no_args_is_help=True, add_completion=False)

GuardOpt = Annotated[Optional[str], typer.Option("--guard", help="default (the guard shipped with hearth), a guard "
                                                 "adapter directory from `hearth guard train`, or a Llama Guard "
                                                 "model (GGUF file, HF directory, store name).")]
PolicyOpt = Annotated[Optional[Path], typer.Option("--policy", help="A policy file (TOML or YAML): categories, "
                                                   "actions, threshold, refusal. Default: Llama Guard 3's 14 "
                                                   "categories, all blocked. See examples/guard/.")]
MAX_INPUT_BYTES = 64 << 20
MAX_LINE_BYTES = 1 << 20


def _inputs(text: Optional[str], file: Optional[Path], role: str) -> list[tuple[list[dict], str]]:
    """(messages, role) per input: TEXT, or one per JSONL line ({"text": ...} or {"messages": [...]})."""
    if (text is None) == (file is None):
        raise HearthError("give a TEXT to check or --file F.jsonl (one of them)")
    if text is not None:
        if not text.strip():
            raise HearthError("nothing to check: the text is empty")
        return [(_as_turns(text, role), role)]
    try:
        if file.stat().st_size > MAX_INPUT_BYTES:
            raise HearthError(f"{file} is larger than {MAX_INPUT_BYTES >> 20} MiB; split it")
        raw = file.read_bytes()
    except FileNotFoundError:
        raise HearthError(f"file not found: {file}") from None
    except OSError as e:
        raise HearthError(f"cannot read {file}: {e.strerror or e}") from None
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            raise HearthError(f"{file} line {n} is longer than {MAX_LINE_BYTES >> 20} MiB")
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise HearthError(f"{file} line {n} is not JSON ({e})") from None
        if isinstance(rec, dict) and isinstance(rec.get("text"), str):
            if not rec["text"].strip():
                raise HearthError(f"{file} line {n}: nothing to check, the text is empty")
            out.append((_as_turns(rec["text"], role), role))
        elif isinstance(rec, dict) and isinstance(rec.get("messages"), list) and rec["messages"]:
            msgs = rec["messages"]
            last = msgs[-1].get("role") if isinstance(msgs[-1], dict) else None
            out.append((msgs, last if last in ("user", "assistant") else role))
        else:
            raise HearthError(f"{file} line {n}: expected {{\"text\": ...}} or {{\"messages\": [...]}}")
    if not out:
        raise HearthError(f"nothing to check: {file} has no lines")
    return out


def _as_turns(text: str, role: str) -> list[dict]:
    """A lone text checked as a response gets an empty-looking user turn before it (Llama Guard classifies the last
    Agent message of a conversation)."""
    if role == "assistant":
        return [{"role": "user", "content": "(the user's message is not shown)"}, {"role": "assistant", "content": text}]
    return [{"role": "user", "content": text}]


@app.command()
def check(
    text: Annotated[Optional[str], typer.Argument(help="The text to check (or use --file).")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="JSONL: one {\"text\": ...} or {\"messages\": [...]} "
                                                 "per line.")] = None,
    guard: GuardOpt = None,
    policy: PolicyOpt = None,
    role: Annotated[str, typer.Option(help="user: check a prompt; assistant: check a response.")] = "user",
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per input: {\"flagged\", \"categories\", "
                                           "\"score\"}.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    threads: Threads = None,
) -> None:
    """Classify a prompt or a response (or each line of a JSONL file) as safe or unsafe, with its categories.

    Example: hearth guard check "How do I pick a lock?" --json"""
    from hearth.guard.classifier import classify
    from hearth.guard.policy import load_policy
    from hearth.guard.prompt import ROLES

    if role not in ROLES:
        raise HearthError(f"--role must be user or assistant, not {role!r}")
    pol = load_policy(policy)
    items = _inputs(text, file, role)
    apply_threads(threads)
    prepare_process(device)
    engine, fmt, adapter = open_guard(guard, pol, device)
    verdicts = classify(engine, fmt, items, adapter=adapter)
    from hearth.guard.taxonomy import BY_CODE

    names = {c.code: c.name for c in pol.categories} | {c: BY_CODE[c].name for c in BY_CODE}
    for v in verdicts:
        if v.dropped_turns:
            print(f"hearth: the conversation was longer than the guard's context: its {v.dropped_turns} oldest "
                  "message(s) were left out", file=sys.stderr)
        if json_out:
            print(json.dumps(v.to_json()))
        else:
            what = "unsafe" if v.unsafe else "safe"
            cats = ", ".join(f"{c} {names.get(c, '?')}" for c in v.categories)
            act = "" if v.action in ("allow",) and not v.unsafe else f" -> {v.action}"
            print(f"{what} (score {v.score:.3f}){': ' + cats if cats else ''}{act}")


def open_guard(ref: Optional[str], policy, device: str = "cpu"):
    """(a synchronous engine that runs the guard, its GuardFormat, the adapter name or None)."""
    from hearth.engine.llm_engine import EngineConfig, LLMEngine
    from hearth.guard.classifier import GuardFormat
    from hearth.guard.load import ADAPTER_NAME, resolve_guard
    from hearth.loader import load

    src = resolve_guard(ref)
    lm = load(src.base, device=device)
    adapters = {ADAPTER_NAME: str(src.adapter)} if src.adapter else {}
    engine = LLMEngine(lm, EngineConfig(adapters=adapters, kv_cache_bytes=256 << 20, max_num_seqs=16))
    fmt = GuardFormat(lm.tokenizer, lm.chat_template, policy, engine.max_model_len)
    return engine, fmt, ADAPTER_NAME if src.adapter else None


@app.command()
def train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory: the adapter, recipe.json, "
                                         "data.json, log.jsonl, loss.png, checkpoint/.")],
    base: Annotated[str, typer.Option(help="The model to tune into a guard.")] = "smollm2",
    top_layers: Annotated[int, typer.Option(help="LoRA on the top N blocks (the blocks below are cached once).",
                                            min=1)] = 6,
    rank: Annotated[int, typer.Option(help="LoRA rank.", min=1)] = 16,
    alpha: Annotated[float, typer.Option(help="LoRA alpha.", min=0.0)] = 32.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate.", min=0.0)] = 4e-4,
    epochs: Annotated[float, typer.Option(help="Passes over the training data.", min=0.0)] = 2.0,
    batch_size: Annotated[int, typer.Option(help="Examples per step.", min=1)] = 8,
    max_safe_prompts: Annotated[int, typer.Option(help="chatterbot small-talk prompts sampled.", min=0)] = 900,
    limit: Annotated[Optional[int], typer.Option(help="At most N examples (a quick run).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling, split, order and adapter init.", min=0)] = 0,
    max_len: Annotated[int, typer.Option(help="Longest example in tokens.", min=64)] = 768,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output from its checkpoint.")] = False,
    threads: Threads = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Fine-tune the default model into a Llama Guard-format guard (LoRA) on safety data shipped in packages.

    The defaults make hearth's shipped guard (hearth/guard/default); recipe.json records the command.
    Example: hearth guard train -o my-guard"""
    from hearth.tune.guard import GuardRecipe, train_guard

    logging.getLogger("hearth").setLevel(logging.INFO)
    recipe = GuardRecipe(base=base, top_layers=top_layers, rank=rank, alpha=alpha, lr=lr, epochs=epochs,
                         batch_size=batch_size, max_safe_prompts=max_safe_prompts, limit=limit, seed=seed,
                         max_len=max_len)
    apply_threads(threads)
    prepare_process("cpu")
    summary = train_guard(recipe, output, resume=resume, progress=not quiet,
                          on_stage=lambda s: print(f"hearth: {s}", file=sys.stderr))
    print(f"guard adapter in {output} ({summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
          f"{summary['seconds'] / 60:.1f} min); use it with --guard {output}")


app.command("eval")(guard_eval)
