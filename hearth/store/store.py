"""The store: named models whose files are content-addressed blobs under $HEARTH_HOME (default ~/.hearth).

    manifests/<name>.json   one per model (see manifest.py); written last, atomically: a model is
                            visible exactly when all its blobs are in place
    blobs/, tmp/, verified/, lock                               see blobs.py
    models/<name>/          Hugging Face models only: symlinks to the blobs, named as the loader expects

A GGUF model loads straight from its weights blob. Writers stage their copies without the lock and
commit (blob renames, then the manifest, then garbage collection of blobs no manifest uses) under it,
so a pull killed at any point leaves a valid store, and the next pull finishes the job.

A bad manifest (damaged, hostile, or not a file at all) makes only its own model unusable: `list` names it
as damaged, `rm` removes it, and garbage collection goes on, keeping every blob whose digest appears in the
damaged file's bytes. Garbage collection also sweeps what killed or failed writers left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hearth.errors import HearthError
from hearth.fsutil import atomic_write, fsync_dir
from hearth.store.blobs import Blobs, Staged, free_bytes, os_error, short, store_lock
from hearth.store.common import Result, default_home, human_bytes
from hearth.store.manifest import NAME_RE, Layer, Manifest, ManifestError, check_name
from hearth.store.upkeep import digests_mentioned, read_manifest_file, sweep_leftovers
from hearth.store.progress import SILENT, Progress

log = logging.getLogger("hearth")


def stored_model_path(ref: str) -> Path | None:
    """The loader's hook: the path of a model in the store named `ref` (verified), or None if there is none.
    Never creates anything when the store or the model does not exist."""
    try:
        check_name(ref)
    except HearthError:
        return None  # a path, not a name
    store = Store()
    if not store.manifest_path(ref).is_file():
        return None
    return store.model_path(ref)


@dataclass
class BlobReport:
    digest: str
    size: int
    users: list[str]  # "weights of smollm2"
    problem: str | None


@dataclass
class VerifyReport:
    blobs: list[BlobReport] = field(default_factory=list)
    damaged_manifests: list[str] = field(default_factory=list)
    unreferenced: list[str] = field(default_factory=list)

    @property
    def bad(self) -> list[BlobReport]:
        return [b for b in self.blobs if b.problem]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


class Store:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_home()
        self.blobs = Blobs(self.root)
        self.manifests = self.root / "manifests"
        self.models = self.root / "models"

    # ------------------------------------------------------------------------------------ reading

    def manifest_path(self, name: str) -> Path:
        return self.manifests / f"{check_name(name)}.json"

    def names(self) -> list[str]:
        """Every model name with an entry in manifests/, whatever the entry is (a damaged one is listed too, so
        that `list` shows it and `rm` can remove it). Entries whose name is no model name are not models."""
        try:
            entries = list(self.manifests.glob("*.json")) if self.manifests.is_dir() else []
        except OSError:
            return []
        return sorted(p.stem for p in entries if NAME_RE.fullmatch(p.stem) and not p.stem.endswith((".json", ".tmp")))

    def exists(self, name: str) -> bool:
        """True if the name is taken, by a usable manifest or a damaged one."""
        return os.path.lexists(self.manifest_path(name))

    def get(self, name: str) -> Manifest:
        path = self.manifest_path(name)
        try:
            data = read_manifest_file(path)
            m = Manifest.from_json(data)
        except FileNotFoundError:
            raise HearthError(
                f"no model named {name!r} in the store {self.root}; see `hearth list`, or add it with `hearth pull SOURCE --name {name}`"
            ) from None
        except ManifestError as e:
            raise HearthError(f"the manifest of {name!r} is damaged ({e}); `hearth rm {name}` and pull it again") from None
        except OSError as e:
            raise HearthError(f"cannot read {path}: {e.strerror}") from None
        if m.name != name:
            raise HearthError(f"the manifest of {name!r} names another model ({m.name!r}); `hearth rm {name}` and pull it again")
        return m

    def all(self) -> tuple[list[Manifest], list[str]]:
        """Every readable manifest, and the names whose manifest is damaged."""
        good, damaged = [], []
        for name in self.names():
            try:
                good.append(self.get(name))
            except HearthError:
                damaged.append(name)
        return good, damaged

    def read_layer(self, layer: Layer) -> bytes:
        """A (small) layer's bytes, checked against its digest."""
        problem = self.blobs.check(layer.digest, layer.size)
        if problem:
            raise HearthError(f"store blob {short(layer.digest)} ({layer.label}) {problem}; run `hearth verify`")
        return self.blobs.path(layer.digest).read_bytes()

    def model_path(self, name: str, progress: Progress | None = None) -> Path:
        """The path the loader opens (a GGUF blob, or a directory of links to blobs), after checking the
        blobs it will read: sizes always, contents by hash (cached for big blobs, see blobs.py)."""
        m = self.get(name)
        progress = progress or Progress()
        needed = [m.weights] if m.format == "gguf" else [layer for layer in m.layers if layer.filename]
        for layer in needed:
            if self.blobs.trusted(layer.digest, layer.size):
                continue
            with progress.task(f"checking {layer.filename or layer.kind}", layer.size) as advance:
                problem = self.blobs.check(layer.digest, layer.size, advance=advance)
            if problem:
                raise HearthError(
                    f"model {name!r} is damaged: blob {short(layer.digest)} ({layer.label}) {problem}; "
                    f"run `hearth verify`, then pull or import {name} again"
                )
        if m.format == "gguf":
            return self.blobs.path(m.weights.digest)
        if not self._materialized(m):
            with self._writing():
                self._materialize(m)
        return self.models / name

    # ------------------------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _writing(self):
        """The store lock, with OSErrors turned into one-line errors."""
        self._check_root()
        try:
            with store_lock(self.root):
                yield
        except OSError as e:
            raise os_error(e, self.root) from None

    def _check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise HearthError(f"the store {self.root} is a file, not a directory; point HEARTH_HOME elsewhere")

    def pull(self, source: str, name: str | None = None, license_file: Path | None = None,
             if_missing: bool = False, progress: Progress | None = None, source_label: str | None = None,
             force: bool = False) -> Result:
        """Add a model from SOURCE (see sources.py); blobs are shared. A model of that name with other layers (weights,
        license, template, ...) is replaced only with `force` (else HearthError, nothing written); with the same layers
        nothing is written (Result.unchanged) unless a blob needs repair."""
        from hearth.store import sources

        src = sources.detect(source)
        if src.kind == "bundle":
            if license_file is not None:
                raise HearthError("--license cannot change the license of a bundle; pull the original source instead")
            if if_missing and name is not None and self.exists(name):
                return Result(self.get(name), skipped=True)
            return self.import_bundle(src.path, name=name, progress=progress, force=force)
        name = check_name(name or src.name)
        if if_missing and self.exists(name):
            return Result(self.get(name), skipped=True)
        plan = sources.plan(src, license_file)
        return self._add(plan, name, progress or SILENT, source_label, force)

    def _add(self, plan, name: str, progress: Progress, source_label: str | None = None, force: bool = False) -> Result:
        need = sum(p.path.stat().st_size for p in plan.layers if p.path is not None)
        self._check_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, self.root) from None
        free = free_bytes(self.root)
        if free is not None and free < need:
            raise HearthError(f"not enough space for {name}: it needs {human_bytes(need)}, {self.root} has {human_bytes(free)} free")
        try:
            with self.blobs.staging() as st:
                layers, staged, reused = [], [], 0
                for p in plan.layers:
                    if p.path is not None:
                        with progress.task(f"copying {p.path.name}", p.path.stat().st_size) as advance:
                            s = st.stage_file(p.path, advance)
                    else:
                        s = st.stage_bytes(p.data)
                    layers.append(Layer(p.kind, s.digest, s.size, p.media_type, p.filename))
                    if self._already_stored(s):
                        s.path.unlink()  # keep the disk peak low: an intact copy is already in blobs/
                        reused += 1
                    else:
                        staged.append(s)
                manifest = Manifest(name=name, format=plan.format, layers=layers, summary=plan.summary,
                                    license=plan.license, source=source_label or plan.source.description, created=_now())
                if not staged and self._has_layers(name, layers):  # the same model again, intact: up to date
                    return Result(self.get(name), reused=reused, unchanged=True)
                replaced = self._commit(manifest, staged, force=force, command="hearth pull SOURCE --force")
        except OSError as e:
            raise os_error(e, self.root) from None
        except HearthError:
            raise
        except ValueError as e:  # Layer/Manifest: a file name the store cannot hold (control characters, too long)
            raise HearthError(f"cannot add {name} from {plan.source.description}: {e}") from None
        return Result(manifest, new_bytes=sum(s.size for s in staged), reused=reused, replaced=replaced)

    def _already_stored(self, s: Staged) -> bool:
        return self.blobs.path(s.digest).exists() and self.blobs.check(s.digest, s.size) is None

    def _has_layers(self, name: str, layers: list[Layer]) -> bool:
        try:
            return self.exists(name) and self.get(name).layers == layers
        except HearthError:  # a damaged manifest: pulling again repairs it
            return False

    def _commit(self, manifest: Manifest, staged: list[Staged], force: bool = True,
                command: str = "hearth import FILE --force") -> bool:
        """Under the lock: the HF links built aside, blobs into place, then the manifest, then the links swapped in,
        then GC. Whatever fails before the manifest is written leaves no model behind. `force`: replace a model of
        that name with other weights (else refused, see check_replace). True if it replaced a model."""
        with self._writing():
            self.check_replace(manifest, force, command)
            links = self._build_links(manifest) if manifest.format == "hf" else None
            try:
                for s in staged:
                    self.blobs.commit(s)
                if staged:
                    self.blobs.finish_commits()
                gone = [layer for layer in manifest.layers if not self.blobs.path(layer.digest).exists()]
                if gone:  # a blob we found in place was removed by a `hearth rm` in between
                    raise HearthError(f"blob {short(gone[0].digest)} ({gone[0].label}) vanished while adding {manifest.name}; run the command again")
                replaced = self.exists(manifest.name)
                self._write_manifest(manifest)
                if links is not None:
                    self._swap_links(manifest, links)
                    links = None
            finally:
                if links is not None:
                    shutil.rmtree(links, ignore_errors=True)
            self._collect_garbage()
        return replaced

    def check_replace(self, manifest: Manifest, force: bool, command: str = "hearth import FILE --force") -> None:
        """Refuse (unless `force`) to let `manifest` replace a model of the same name with other layers: its
        weights would be gone at the next garbage collection. The same layers again is a repair, not a replacement."""
        if force or not self.exists(manifest.name):
            return
        try:
            if self.get(manifest.name).layers == manifest.layers:
                return
        except HearthError:
            pass  # a damaged manifest of that name: replacing it is still the user's call
        raise HearthError(f"a model named {manifest.name!r} is already in the store with other weights or files; nothing "
                          f"was stored: `{command}` replaces it, `--name NEW` stores this one beside it")

    def _write_manifest(self, manifest: Manifest) -> None:
        self.manifests.mkdir(parents=True, exist_ok=True)
        for stale in self.manifests.glob(".*.tmp"):  # left by a process killed mid-write (we hold the lock)
            stale.unlink(missing_ok=True)
        atomic_write(self.manifest_path(manifest.name), manifest.to_json())

    def remove(self, name: str) -> int:
        """Forget a model; delete the blobs no other model uses. Returns the bytes freed."""
        with self._writing():
            path = self.manifest_path(name)
            if not os.path.lexists(path):
                self.get(name)  # raises the "no model named" error
            if path.is_dir() and not path.is_symlink():  # a damaged store: whatever sits there is not a manifest
                shutil.rmtree(path)
            else:
                path.unlink()
            fsync_dir(self.manifests)
            shutil.rmtree(self.models / name, ignore_errors=True)
            return self._collect_garbage()

    def copy(self, name: str, new: str) -> Manifest:
        check_name(new)
        with self._writing():
            m = self.get(name)
            if self.exists(new):
                raise HearthError(f"a model named {new!r} already exists; `hearth rm {new}` first or choose another name")
            copy = dataclasses.replace(m, name=new, created=_now())
            self._write_manifest(copy)
            if copy.format == "hf":
                self._materialize(copy)
        return copy

    def _collect_garbage(self) -> int:
        """Delete blobs no manifest lists, and what killed or failed writers left (call with the lock held).
        A damaged manifest keeps every blob whose digest its bytes mention; only one that cannot be read
        at all stops the collection, since its blobs cannot be told apart."""
        sweep_leftovers(self.blobs, self.models, self.manifests)
        manifests, damaged = self.all()
        used = {d for m in manifests for d in m.digests()}
        for name in damaged:
            mentioned = digests_mentioned(self.manifest_path(name))
            if mentioned is None:
                log.warning("the manifest of %s cannot be read; unused blobs are kept until it is removed (hearth rm %s)", name, name)
                return 0
            used |= mentioned
        freed = 0
        for digest in self.blobs.all_digests() - used:
            with contextlib.suppress(OSError):
                freed += self.blobs.path(digest).stat().st_size
            self.blobs.remove(digest)
        live = set(self.names())
        if self.models.is_dir():
            for d in self.models.iterdir():
                if d.name not in live and not d.name.startswith("."):
                    shutil.rmtree(d, ignore_errors=True)
        return freed

    # ---------------------------------------------------------------------- HF model directories

    def _materialized(self, m: Manifest) -> bool:
        d = self.models / m.name
        try:
            entries = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_symlink()}
            want = {layer.filename: layer for layer in m.layers if layer.filename}
            if entries != set(want):
                return False
            return all(Path(os.path.realpath(d / f)) == self.blobs.path(layer.digest).resolve() for f, layer in want.items())
        except OSError:
            return False

    def _materialize(self, m: Manifest) -> None:
        """models/<name>/: a symlink per file-named layer, swapped in whole (call with the lock held)."""
        self._swap_links(m, self._build_links(m))

    def _build_links(self, m: Manifest) -> Path:
        """A temp directory of the links models/<name>/ will hold; removed again if any link cannot be made."""
        self.models.mkdir(parents=True, exist_ok=True)
        tmp = self.models / f".{m.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp.mkdir()
        try:
            for layer in m.layers:
                if not layer.filename:
                    continue
                link = tmp / layer.filename
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.path.relpath(self.blobs.path(layer.digest), link.parent), link)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    def _swap_links(self, m: Manifest, tmp: Path) -> None:
        final = self.models / m.name
        old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
        if final.exists() or final.is_symlink():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        for stale in self.models.glob(".*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    # ------------------------------------------------------------------------------------ verify

    def verify(self, name: str | None = None, progress: Progress | None = None) -> VerifyReport:
        """Rehash every blob (of one model, or of the whole store) and say which are corrupt."""
        progress = progress or SILENT
        report = VerifyReport()
        if name is not None:
            manifests = [self.get(name)]
        else:
            manifests, report.damaged_manifests = self.all()
        users: dict[str, tuple[int, list[str]]] = {}
        for m in manifests:
            for layer in m.layers:
                users.setdefault(layer.digest, (layer.size, []))[1].append(f"{layer.label} of {m.name}")
        for digest, (size, who) in users.items():
            with progress.task(f"verifying {short(digest)}", size) as advance:
                problem = self.blobs.check(digest, size, deep=True, advance=advance)
            report.blobs.append(BlobReport(digest, size, who, problem))
        if name is None and not report.damaged_manifests:
            report.unreferenced = sorted(self.blobs.all_digests() - set(users))
        return report

    # ------------------------------------------------------------------------------------ bundles

    def export(self, name: str, out: Path, progress: Progress | None = None, force: bool = False) -> int:
        """Write `name` as a bundle file `out` (replacing an existing file only with `force`); its size in bytes."""
        from hearth.store.bundle import export_bundle

        return export_bundle(self, self.get(name), Path(out).expanduser(), progress or SILENT, force)

    def import_bundle(self, path: Path, name: str | None = None, progress: Progress | None = None,
                      force: bool = False) -> Result:
        """Add the model in a bundle, all or nothing: its manifest is checked (names, sizes, one size per digest,
        the name free or `force`, room on the disk) before a byte of it is written, every blob is hashed
        before anything is committed, and a refused bundle leaves the store as it was."""
        from hearth.store.bundle import import_bundle

        return import_bundle(self, Path(path).expanduser(), name, progress or SILENT, force)
