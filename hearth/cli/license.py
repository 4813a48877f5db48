"""`hearth license check MODEL`: the licence that travels with the weights and what it asks of one deployment.

Prints every obligation (VIOLATED, a duty that applies, or n/a with why) with the clause it comes from; exits 1
when something is violated, so a release script can stop on it. The library call is
hearth.release.licensing.check_license; `hearth release` makes the same one.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from hearth.cli.options import ModelArg
from hearth.textsafe import terminal_safe

app = typer.Typer(help="Which licence came with a model, and what it asks of your deployment.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _group() -> None:
    """Which licence came with a model, and what it asks of your deployment."""


@app.command()
def check(
    model: ModelArg,
    mau: Annotated[Optional[int], typer.Option("--mau", min=0, help="Monthly active users of your (and your "
                                               "affiliates') products: over 700 million, Llama's §2 applies.")] = None,
    country: Annotated[Optional[str], typer.Option("--country", help="Where you are domiciled or have your principal "
                                                   "place of business (ISO 3166 alpha-2: DE, US, ...).")] = None,
    use_case: Annotated[Optional[str], typer.Option("--use-case", help="What the model will do, in words; screened "
                                                    "against the acceptable-use policy's prohibited categories.")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="The name you release the derived model under.")] = None,
    multimodal: Annotated[Optional[bool], typer.Option("--multimodal/--no-multimodal", help="Whether the model takes "
                                                       "images (default: read from its config or metadata).")] = None,
    distill_into: Annotated[Optional[str], typer.Option("--distill-into", help="A student model (name, file, "
                                                        "directory) or its licence id, trained on this model's outputs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> int:
    """List the obligations of the model's licence for this deployment, and each one it violates (exit 1)."""
    from hearth.release.licensing import Deployment, check_license

    report = check_license(model, Deployment(mau=mau, country=country, use_case=use_case, name=name,
                                             multimodal=multimodal, distill_into=distill_into))
    if as_json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        _print(report)
    return 1 if report.violations else 0


def _print(report) -> None:
    ids = ", ".join(x for x in (report.family, report.spdx) if x and x != "unknown")
    print(terminal_safe(report.title) + (f" ({terminal_safe(ids)})" if ids else ""))
    for line in report.evidence:
        print(f"  found: {terminal_safe(line)}")
    if report.files:
        print(f"  files: {terminal_safe(', '.join(report.files))}")
    print()
    order = sorted(report.obligations, key=lambda o: (not o.violated, not o.applies))
    for o in order:
        state = "VIOLATED" if o.violated else "applies" if o.applies else "n/a"
        print(f"{state:<9} {terminal_safe(o.key)}  [{terminal_safe(o.clause)}]")
        print(f"          {terminal_safe(o.detail)}")
    n = len(report.violations)
    print()
    print(f"{n} violation{'s' * (n != 1)}" if n else "no violation found", end="")
    print(" (a reader's aid, not legal advice; the licence text that came with the weights is what binds)")
