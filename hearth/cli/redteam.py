"""`hearth redteam`: attack suites from packages answered by a model, judged by the guard and a refusal detector,
with and without the guard in front (hearth/redteam/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.cli.options import Device, DType, ModelArg, Switches, Threads, apply_threads, prepare_process
from hearth.errors import HearthError
from hearth.progress import phase_bars

SUITE_HELP = "advbench, harmbench, donotanswer, jailbreak, pasttense, injection, overrefusal"


def default_cache() -> Path:
    from hearth.store.common import default_home

    return default_home() / "redteam" / "cache.sqlite"


def redteam(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Write report.md, report.json, outcomes.jsonl and the "
                                                                "charts into this folder (made if absent).")],
    adapter: Annotated[Optional[Path], typer.Option(help="A LoRA adapter folder (PEFT format, e.g. from hearth tune) "
                                                         "applied to MODEL.")] = None,
    guard: Annotated[str, typer.Option(help="The guard that judges harm and filters in the guarded configuration: "
                                            "default (hearth's own), a guard adapter folder, or a whole guard model."
                                       )] = "default",
    policy: Annotated[Optional[Path], typer.Option(help="The guard's policy file (TOML or YAML) in the guarded "
                                                        "configuration; the harm judge always reads all of S1-S14."
                                                   )] = None,
    suites: Annotated[str, typer.Option(help=f"Comma-separated, of: {SUITE_HELP}.")] = SUITE_HELP.replace(" ", ""),
    limit: Annotated[Optional[int], typer.Option(help="At most this many probes per suite, a seeded random draw "
                                                      "(default: each suite's default size).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the draws (and of sampling with --temperature).", min=0)] = 0,
    max_tokens: Annotated[int, typer.Option(help="At most this many tokens a response.", min=1, max=4096)] = 128,
    temperature: Annotated[float, typer.Option(help="0: greedy (default, reproducible as is); above 0 each probe "
                                                    "samples with its own seed from --seed.", min=0, max=2)] = 0.0,
    batch: Annotated[int, typer.Option(help="Requests in flight on the engine at once (1: one at a time).", min=1,
                                       max=256)] = 64,
    cache: Annotated[Optional[Path], typer.Option(help="The SQLite file of responses and verdicts already computed "
                                                       "(default: $HEARTH_HOME/redteam/cache.sqlite). A killed run "
                                                       "goes on from it; a repeated one costs nothing.")] = None,
    judge_check: Annotated[bool, typer.Option("--judge-check/--no-judge-check",
                                              help="Measure the judges against pyrit's human labels (refusals; harm "
                                                   "scores of ~1,000 responses).")] = True,
    judge_limit: Annotated[Optional[int], typer.Option(help="At most this many human-labelled responses for the harm "
                                                            "judge's check.", min=1)] = None,
    device: Device = "cpu",
    dtype: DType = "auto",
    threads: Threads = None,
):
    """Red-team MODEL: harmful requests (AdvBench, HarmBench, Do-Not-Answer), attacks (jailbreak templates, past-tense
    rephrasings, prompt injections) and benign prompts that sound risky (over-refusal). Reports attack success
    (harmful and not refused) and over-refusal with 95% intervals, overall and per suite, category and template,
    without and with the guard in front, and how far the judges agree with human labels.

    Example: hearth redteam smollm2 --limit 50 -o redteam-smollm2
    """
    from hearth.guard.policy import load_policy
    from hearth.redteam.cache import ResultCache
    from hearth.redteam.report import pct, write_outputs
    from hearth.redteam.run import RedteamOptions, run_redteam

    apply_threads(threads)
    if output.exists() and not output.is_dir():
        raise HearthError(f"--output {output} is a file; give a folder")
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise HearthError(f"--adapter {adapter} is not a LoRA adapter folder (no adapter_config.json)")
    names = tuple(dict.fromkeys(s.strip() for s in suites.split(",") if s.strip()))
    if not names:
        raise HearthError(f"--suites is empty; name at least one of {SUITE_HELP}")
    pol = load_policy(policy)
    prepare_process(device)
    opts = RedteamOptions(suites=names, limit=limit, seed=seed, max_tokens=max_tokens, temperature=temperature,
                          window=batch, judge_check=judge_check, judge_limit=judge_limit, device=device, dtype=dtype,
                          kernels=Switches.from_env().kernels)
    store = ResultCache(cache or default_cache())
    try:
        with phase_bars() as progress:
            run = run_redteam(model, adapter, guard, pol, opts, store, progress=progress)
    finally:
        store.close()
    report = write_outputs(run, output)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"redteam: {model} (guard {report['guard']}, policy {report['policy']})")
    for col in ("suite", "probes", "attack success, no guard", "with guard", "over-refusal, no guard", "with guard"):
        table.add_column(col, justify="left" if col == "suite" else "right")
    cfg = report["configurations"]
    for s, info in report["suites"].items():
        a, b = cfg["no_guard"]["per_suite"].get(s, {}), cfg["guard"]["per_suite"].get(s, {})
        table.add_row(s + (" *" if info["guard_trained_on_it"] else ""), str(info["probes"]),
                      pct(a.get("attack_success_rate")), pct(b.get("attack_success_rate")),
                      pct(a.get("over_refusal_rate")), pct(b.get("over_refusal_rate")))
    Console(highlight=False).print(table)
    if any(v["guard_trained_on_it"] for v in report["suites"].values()):
        print("* the guard trained on this suite: its figures there are not evidence")
    r = report["run"]
    print(f"{r['responses_generated']} responses generated, {r['responses_cached']} from the cache"
          + (f" ({r['prompts_per_second']} prompts/s)" if r["prompts_per_second"] else "")
          + f"; wrote {output}/report.md, report.json, outcomes.jsonl, attack_success_by_category.png, tradeoff.png")
