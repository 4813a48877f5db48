"""`hearth release MODEL -o DIR`, `hearth release verify DIR --key PUB`, `hearth release keygen`
(hearth/release/). `release MODEL` is the group's default command (`create`), so the issue's spelling works as is."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from hearth.cli.options import ModelArg
from hearth.errors import HearthError


class _DefaultCreate(TyperGroup):
    """`hearth release MODEL ...` runs `create`; `verify` and `keygen` are subcommands."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_DefaultCreate, no_args_is_help=True, add_completion=False,
                  help="Release a model with its licence files, model card, openness and provenance documents, an "
                       "ML-BOM and a signature, through a gate of thresholds. `hearth release MODEL -o DIR` builds "
                       "one; `verify` checks a signed one.")


@app.command()
def create(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="The release folder (made; must be empty or new).")],
    adapter: Annotated[Optional[Path], typer.Option(help="A LoRA adapter folder (hearth tune -o): released as the "
                                                         "adapter, or merged with --format.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="gguf or safetensors: the weights as one model file "
                                                                "(an adapter merged in). Default: as they are.")] = None,
    gate: Annotated[Optional[Path], typer.Option(help="gate.toml: thresholds the release must meet "
                                                      "(examples/release/gate.toml).")] = None,
    sign_key: Annotated[Optional[Path], typer.Option(help="A PEM private key (hearth release keygen): signs every "
                                                          "file into model.sig.")] = None,
    evals: Annotated[Optional[Path], typer.Option(help="`hearth eval --json` output, for the card and the gate.")] = None,
    redteam: Annotated[Optional[Path], typer.Option(help="`hearth redteam` report.json, for the card and the gate."
                                                    )] = None,
    tune_summary: Annotated[Optional[Path], typer.Option(help="`hearth tune`'s summary.json (default: the one in "
                                                              "--adapter): training data, settings, time.")] = None,
    guard: Annotated[Optional[str], typer.Option(help="The guard the model is to be served behind (named in the "
                                                      "card; a gate may require one).")] = None,
    guard_policy: Annotated[Optional[Path], typer.Option(help="A guard policy file to ship in the release.")] = None,
    license_file: Annotated[Optional[Path], typer.Option(help="The licence text to ship as LICENSE where none came "
                                                              "with the weights (a GGUF names only the licence's "
                                                              "id), e.g. /usr/share/common-licenses/Apache-2.0.")] = None,
    name: Annotated[Optional[str], typer.Option(help="The released model's name (a Llama derivative's must begin "
                                                     "with \"Llama\").")] = None,
    version: Annotated[str, typer.Option(help="The release's version.")] = "1.0.0",
    mau: Annotated[Optional[int], typer.Option(help="Monthly active users of your products (the licence check).",
                                               min=0)] = None,
    country: Annotated[Optional[str], typer.Option(help="Where the releasing entity is domiciled (ISO code).")] = None,
    use_case: Annotated[Optional[str], typer.Option(help="What the model is for, in words (checked against the "
                                                         "acceptable use policy).")] = None,
    accept_risk: Annotated[Optional[str], typer.Option(help="Release despite failed gate thresholds or licence "
                                                            "findings; the reason is recorded in the card and the "
                                                            "provenance.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty -o folder.")] = False,
):
    """Build a release folder: weights with lineage, README.md (a Hugging Face model card), LICENSE/NOTICE/USE_POLICY,
    mof.yml, bom.cdx.json, provenance.intoto.json, eu/, release.json and model.sig.

    Example: hearth release smollm2 --adapter out/support --evals eval.json --redteam rt/report.json
    --gate examples/release/gate.toml --sign-key release.key -o release/
    """
    from hearth.release.build import ReleaseOptions, release

    if accept_risk is not None and not accept_risk.strip():
        raise HearthError("--accept-risk needs a reason in words")
    deployment = {"mau": mau, "country": country, "use_case": use_case}
    opts = ReleaseOptions(name=name, version=version, adapter=adapter, fmt=fmt, gate=gate, sign_key=sign_key,
                          evals=evals, redteam=redteam, tune_summary=tune_summary, guard_policy=guard_policy,
                          guard=guard, license_file=license_file, accept_risk=accept_risk, deployment=deployment,
                          force=force)
    result = release(model, output, opts, on_line=lambda line: print(line, file=sys.stderr))
    gate_v = result.gate["verdict"] if result.gate else "no gate"
    print(f"released {model} into {result.folder}: {len(result.files)} files; gate: {gate_v}; "
          f"{'signed (model.sig)' if result.signed else 'not signed (no --sign-key)'}")
    for line in result.openness:
        print(line)
    for f in result.files:
        print(f"  {f}")


@app.command()
def verify(
    folder: Annotated[Path, typer.Argument(help="A release folder with model.sig.")],
    key: Annotated[Path, typer.Option(help="The PEM public key of the signer.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
):
    """Check a release's signature and every file in it: a changed, added or removed file fails and is named.

    Example: hearth release verify release/ --key release.pub
    """
    from hearth.release.signing import verify_folder

    r = verify_folder(folder, key)
    if json_out:
        print(json.dumps({"ok": r.ok, "changed": r.changed, "added": r.added, "removed": r.removed,
                          "message": r.message}))
    elif r.ok:
        print(f"verified: {folder} (every file matches model.sig)")
    if not r.ok:
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in (("changed", r.changed), ("added", r.added),
                                                             ("removed", r.removed)) if v)
        raise HearthError(f"verification failed for {folder}: {what or r.message}")


@app.command()
def keygen(
    output: Annotated[Path, typer.Option("--output", "-o", help="The private key file (PEM); the public key goes "
                                                                "beside it as .pub.")] = Path("release.key"),
):
    """Make a signing key pair (elliptic curve, PEM) for `hearth release --sign-key`.

    Example: hearth release keygen -o release.key
    """
    from hearth.release.signing import generate_keypair

    if output.exists():
        raise HearthError(f"{output} exists; a key is never overwritten")
    pub = output.with_suffix(".pub")
    generate_keypair(output, pub)
    print(f"wrote {output} (private: keep it secret) and {pub} (give it to whoever verifies)")
