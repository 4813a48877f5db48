"""One file that carries a model to an air-gapped machine: `hearth export NAME -o FILE`, `hearth import FILE`.

A bundle is an uncompressed tar (weights do not compress; tar is readable anywhere):

    hearth-bundle.json        {"format": "hearth-bundle", "version": 1, "manifest": {...}}   first
    blobs/sha256-<hex>        every blob the manifest lists, once each, named by its digest

Import reads it as a stream, hashing each blob into a private staging directory; only when every
digest and size matches the manifest does anything enter the store (blobs, then the manifest). A
flipped byte, a truncated file, an extra or missing blob, or an edited digest is refused with a message
that names the layer, and the staging directory is deleted: nothing half-imported remains.

Nothing in a bundle is trusted before it is checked, and what can be checked without writing is checked
first: the manifest (size- and depth-bounded JSON, every name and size, see manifest.py), its layers'
total against the bundle's own size (a blob cannot be bigger than the file that carries it), then the
caller's `admit` (name taken, free space). Each member's size is checked against the bytes the bundle
really has before it is copied, and sparse members, whose few stored bytes expand to gigabytes of
zeros on extraction, are refused outright.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

from hearth.errors import HearthError
from hearth.fsutil import atomic_open
from hearth.store.blobs import Staged, Staging, blob_filename, free_bytes, os_error, short
from hearth.store.common import Result, check_outside_store, human_bytes, refuse_overwrite
from hearth.store.manifest import MAX_BYTES, Manifest, ManifestError, check_name, load_json
from hearth.store.progress import Progress
from hearth.store.sources import BUNDLE_MANIFEST

FORMAT = "hearth-bundle"
VERSION = 1
MAX_MANIFEST = 2 * MAX_BYTES  # the document around a manifest, indented one level deeper
BLOB_MEMBER = re.compile(r"^blobs/(sha256)-([0-9a-f]{64})$")


class _HashingReader(io.RawIOBase):
    """Reads a blob for tarfile while hashing it, so export never ships a blob that rotted on disk."""

    def __init__(self, f, advance):
        self.f, self.advance, self.h = f, advance, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        buf = self.f.read(n)
        self.h.update(buf)
        self.advance(len(buf))
        return buf

    def readable(self) -> bool:
        return True


def export_bundle(store, m: Manifest, out: Path, progress: Progress, force: bool = False) -> int:
    """Write the bundle to `out` (temp file + fsync + rename; an existing file only with `force`). Returns its size."""
    if out.is_dir():
        raise HearthError(f"{out} is a directory; give the bundle a file name, e.g. -o {out / (m.name + '.hearth')}")
    check_outside_store(out, "-o", store.root)
    refuse_overwrite(out, force)
    if not out.parent.is_dir():
        raise HearthError(f"cannot write {out}: the directory {out.parent} does not exist")
    try:
        with atomic_open(out) as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
                doc = json.dumps({"format": FORMAT, "version": VERSION, "manifest": m.to_dict()}, indent=2).encode()
                info = tarfile.TarInfo(BUNDLE_MANIFEST)
                info.size, info.mode = len(doc), 0o644
                tf.addfile(info, io.BytesIO(doc))
                done: set[str] = set()
                for layer in m.layers:
                    if layer.digest in done:
                        continue
                    done.add(layer.digest)
                    path = store.blobs.path(layer.digest)
                    if not path.exists() or path.stat().st_size != layer.size:
                        raise HearthError(f"cannot export {m.name}: blob {short(layer.digest)} ({layer.label}) is missing or "
                                          "the wrong size; run `hearth verify`")
                    info = tarfile.TarInfo(f"blobs/{blob_filename(layer.digest)}")
                    info.size, info.mode = layer.size, 0o444
                    with open(path, "rb") as f, progress.task(f"exporting {layer.filename or layer.kind}", layer.size) as advance:
                        reader = _HashingReader(f, advance)
                        tf.addfile(info, reader)
                    if "sha256:" + reader.h.hexdigest() != layer.digest:
                        raise HearthError(f"cannot export {m.name}: blob {short(layer.digest)} ({layer.label}) is corrupt on disk; "
                                          "run `hearth verify`, then pull the model again")
    except OSError as e:
        raise HearthError(f"cannot write {out}: {e.strerror or e}") from None
    return out.stat().st_size


def import_bundle(store, path: Path, name: str | None, progress: Progress, force: bool):
    """Store.import_bundle: read and check the bundle (read_bundle), then commit it under the store lock."""
    if name is not None:
        check_name(name)
    store._check_root()

    def admit(m: Manifest) -> Manifest:
        if name is not None:
            m = dataclasses.replace(m, name=name)
        if len(m.to_json()) > MAX_BYTES:
            raise HearthError(f"bundle {path}: its manifest is larger than {MAX_BYTES} bytes; nothing was imported")
        store.check_replace(m, force)  # checked early here, and again under the lock at commit
        need, free = m.size_on_disk(), free_bytes(store.root)
        if free is not None and free < need:
            raise HearthError(f"not enough space to import {m.name}: it needs {human_bytes(need)}, {store.root} has "
                              f"{human_bytes(free)} free; nothing was imported")
        return m

    try:
        with store.blobs.staging() as st:
            manifest, staged = read_bundle(path, st, progress, admit)
            reused, fresh = 0, []
            for s in staged:
                if store._already_stored(s):
                    s.path.unlink()
                    reused += 1
                else:
                    fresh.append(s)
            replaced = store._commit(manifest, fresh, force=force)
    except OSError as e:
        raise os_error(e, store.root) from None
    return Result(manifest, new_bytes=sum(s.size for s in fresh), reused=reused, replaced=replaced)


def read_bundle(path: Path, st: Staging, progress: Progress,
                admit: Callable[[Manifest], Manifest] | None = None) -> tuple[Manifest, list[Staged]]:
    """Stream a bundle into `st`, checking every blob. `admit(manifest)` runs once the manifest has been
    checked and before any blob is written: it may refuse (raise HearthError) or return the manifest to use
    (e.g. renamed). Returns the manifest and the staged blobs, or raises HearthError naming the bad layer
    (the caller's staging directory is then discarded)."""
    if not path.is_file():
        raise HearthError(f"bundle not found: {path}" if not path.exists() else f"{path} is not a file; pass a bundle made by `hearth export`")
    try:
        bundle_size = path.stat().st_size
        tf = tarfile.open(path, mode="r|")
    except (tarfile.TarError, EOFError):
        raise HearthError(f"{path} is not a hearth bundle (not a tar archive); make one with `hearth export NAME -o FILE`") from None
    except OSError as e:
        raise HearthError(f"cannot read {path}: {e.strerror}") from None
    with tf:
        m = _read_manifest(path, tf)
        _check_fits(path, m, bundle_size)
        if admit is not None:
            m = admit(m)
        want = m.digests()
        labels: dict[str, str] = {}
        for layer in m.layers:
            labels.setdefault(layer.digest, layer.label)
        staged: dict[str, Staged] = {}
        while True:
            try:
                member = tf.next()
            except (tarfile.TarError, EOFError):
                missing = [d for d in want if d not in staged]
                where = f" in layer {labels[missing[0]]} ({short(missing[0])})" if missing else ""
                raise HearthError(f"bundle {path} is truncated or damaged{where}; nothing was imported") from None
            if member is None:
                break
            staged_blob = _read_blob(path, bundle_size, tf, member, m, want, labels, staged, st, progress)
            staged[staged_blob.digest] = staged_blob
        missing = [d for d in want if d not in staged]
        if missing:
            raise HearthError(f"bundle {path} lacks layer {labels[missing[0]]} ({short(missing[0])}): it is truncated or "
                              "incomplete; nothing was imported")
    if m.format == "gguf":
        with open(staged[m.weights.digest].path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise HearthError(f"bundle {path}: layer {m.weights.label} is not a GGUF file; nothing was imported")
    return m, list(staged.values())


def _check_fits(path: Path, m: Manifest, bundle_size: int) -> None:
    """Every blob is in the bundle once, so the layers cannot hold more bytes than the bundle file: checked before
    anything is written (a manifest's sizes, like a sparse member, could otherwise make import write gigabytes)."""
    total, seen = 0, set()
    for layer in m.layers:
        if layer.digest in seen:
            continue
        seen.add(layer.digest)
        total += layer.size
        if total > bundle_size:
            raise HearthError(f"bundle {path} is truncated or lacks layer {layer.label} ({short(layer.digest)}): its manifest "
                              f"lists {m.size_on_disk()} bytes of layers, the bundle holds {bundle_size}; nothing was imported")


def _read_manifest(path: Path, tf: tarfile.TarFile) -> Manifest:
    try:
        first = tf.next()
    except (tarfile.TarError, EOFError):
        first = None
    if first is None or first.name != BUNDLE_MANIFEST or not first.isfile() or first.issparse():
        raise HearthError(f"{path} is not a hearth bundle: it does not start with {BUNDLE_MANIFEST}")
    if first.size > MAX_MANIFEST:
        raise HearthError(f"bundle {path}: {BUNDLE_MANIFEST} is {first.size} bytes, more than a manifest may be "
                          f"({MAX_MANIFEST}); nothing was imported")
    try:
        doc = load_json(tf.extractfile(first).read(MAX_MANIFEST + 1), max_bytes=MAX_MANIFEST)
    except (tarfile.TarError, EOFError, ManifestError) as e:
        raise HearthError(f"bundle {path}: {BUNDLE_MANIFEST} is damaged ({e}); nothing was imported") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise HearthError(f"{path} is not a hearth bundle: {BUNDLE_MANIFEST} lacks \"format\": \"{FORMAT}\"")
    if doc.get("version") != VERSION:
        raise HearthError(f"bundle {path} has version {doc.get('version')!r}; this hearth reads version {VERSION}, update it")
    try:
        return Manifest.from_dict(doc.get("manifest"))
    except ManifestError as e:
        raise HearthError(f"bundle {path}: its manifest is invalid ({e}); nothing was imported") from None


def _read_blob(path, bundle_size, tf, member, m, want, labels, staged, st: Staging, progress) -> Staged:
    if member.issparse() or member.type == tarfile.GNUTYPE_SPARSE:  # a few stored bytes that extract to gigabytes
        raise HearthError(f"bundle {path} holds a sparse entry {member.name!r}; `hearth export` never writes one; "
                          "nothing was imported")
    match = BLOB_MEMBER.fullmatch(member.name)
    if not match or not member.isfile():
        raise HearthError(f"bundle {path} holds an unexpected entry {member.name!r}; it was not made by `hearth export`")
    digest = f"{match.group(1)}:{match.group(2)}"
    if digest not in want:
        # An edited manifest digest: name the layer whose digest no blob matches, if it can be told.
        suspects = [x for x in m.layers if x.digest not in staged and x.size == member.size]
        which = f"layer {suspects[0].label} lists {short(suspects[0].digest)} but the bundle holds {short(digest)}" \
            if len(suspects) == 1 else f"it holds blob {short(digest)}, which its manifest does not list"
        raise HearthError(f"bundle {path} was altered: {which}; nothing was imported")
    if digest in staged:
        raise HearthError(f"bundle {path} holds blob {short(digest)} twice; it was not made by `hearth export`")
    label = labels[digest]
    if member.offset_data + member.size > bundle_size:  # before a byte is copied: the header's size is a claim
        raise HearthError(f"bundle {path} is truncated: layer {label} ({short(digest)}) claims {member.size} bytes, more "
                          "than the bundle holds; nothing was imported")
    if member.size != want[digest]:
        raise HearthError(f"bundle {path} was altered: layer {label} is {member.size} bytes but its manifest says "
                          f"{want[digest]}; nothing was imported")
    try:
        with progress.task(f"importing {label}", member.size) as advance:
            s = st.stage_stream(tf.extractfile(member), advance, limit=member.size)
    except (tarfile.TarError, EOFError):
        raise HearthError(f"bundle {path} is truncated: layer {label} ({short(digest)}) is incomplete; nothing was imported") from None
    if s.size != member.size:
        raise HearthError(f"bundle {path} is truncated: layer {label} has {s.size} of {member.size} bytes; nothing was imported")
    if s.digest != digest:
        raise HearthError(f"bundle {path} is damaged: layer {label} does not match its digest {short(digest)}; nothing was imported")
    return s
