"""`hearth release`: one folder that carries a model with its terms, its evidence and its signature.

    weights            adapter files (PEFT) for --adapter; a GGUF (lineage in general.base_model.*, general.license*)
                       or a safetensors directory (with the adapter merged) for --format
    README.md          the model card (card.py), with the gate's outcome
    LICENSE, NOTICE, USE_POLICY   the base's licence text carried over, the Notice its licence requires
    mof.yml, bom.cdx.json, provenance.intoto.json, eu/   openness, ML-BOM, SLSA provenance, EU summary skeleton
    release.json       what went in: the licence check, the gate, the inputs' digests
    model.sig          OpenSSF model-signing over every file above (offline private key)

The folder is built in a temporary sibling and renamed into place at the end: a release the gate refuses, or one
that fails half-way, leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hearth.errors import HearthError

log = logging.getLogger("hearth.release")
FORMATS = ("gguf", "safetensors")
MAX_RECORD_BYTES = 16 << 20  # an eval or red-team report, a tune summary


@dataclass
class ReleaseOptions:
    name: str | None = None  # the released model's name (default: the base's, with the adapter's folder name)
    version: str = "1.0.0"
    adapter: Path | None = None
    fmt: str | None = None  # None: the adapter as it is (or the base's own file); gguf | safetensors: merged
    gate: Path | None = None
    sign_key: Path | None = None
    evals: Path | None = None  # hearth eval --json output
    redteam: Path | None = None  # hearth redteam report.json
    tune_summary: Path | None = None  # hearth tune's summary.json (default: beside the adapter)
    guard_policy: Path | None = None  # shipped in the release (a gate's guard-policy mitigation)
    guard: str | None = None  # the guard the release requires
    license_file: Path | None = None  # the licence text, where none came with the weights (a GGUF names only an id)
    accept_risk: str | None = None
    deployment: dict = field(default_factory=dict)  # licence check: mau, country, use_case, multimodal, distill_into
    force: bool = False


@dataclass
class ReleaseResult:
    folder: Path
    files: list[str]
    gate: dict | None
    license: dict
    signed: bool
    openness: list[str] = field(default_factory=list)


def _read_json(path: Path | None, what: str) -> dict | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise HearthError(f"{what} not found: {path}")
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise HearthError(f"{what} {path} is over {MAX_RECORD_BYTES >> 20} MiB; it is not a hearth record")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise HearthError(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise HearthError(f"{what} {path} is not a JSON object")
    return data


def _sha256(path: Path) -> str:
    from hearth.tune.lineage import sha256_file

    return sha256_file(path)


def _write_weights(model_path: Path, base_ref: str, name: str, opts: ReleaseOptions, tmp: Path,
                   gguf_meta: dict) -> tuple[str, list[str]]:
    """(relation, files written): the weights into tmp."""
    from hearth.tune.export import write_model

    if opts.adapter is not None and opts.fmt is None:
        names = []
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            src = opts.adapter / f
            if not src.is_file():
                raise HearthError(f"--adapter {opts.adapter} has no {f}: not a PEFT adapter folder")
            shutil.copy2(src, tmp / f)
            names.append(f)
        cfg = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = base_ref  # the base by the name people know it, not a local path
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        return "adapter", names
    if opts.fmt is None and opts.adapter is None:
        if model_path.is_file():
            with open(model_path, "rb") as f:
                gguf = f.read(4) == b"GGUF"
            # a stored model's blob is named by its digest: the release names the file after the model
            target = f"{name}.gguf" if gguf else model_path.name
            shutil.copy2(model_path, tmp / target)
            return "quantized" if gguf else "finetune", [target]
        raise HearthError("a model folder is released with --format gguf or --format safetensors")
    from hearth.loader import load

    lm = load(base_ref, dtype="float32")
    if opts.adapter is not None:
        from hearth.tune.peft_io import load_adapter

        load_adapter(lm.model, opts.adapter, dtype=lm.dtype)
    if opts.fmt == "gguf":
        out = tmp / "model.gguf"
        write_model(lm, "gguf", out, metadata=gguf_meta)
        return ("merge" if opts.adapter else "quantized"), [out.name]
    write_model(lm, "safetensors", tmp / "model")
    return ("merge" if opts.adapter else "finetune"), sorted(f"model/{p.name}" for p in (tmp / "model").iterdir())


def _licence_files(report, tmp: Path) -> list[str]:
    """LICENSE, USE_POLICY and NOTICE from what came with the weights, and the Notice the licence requires."""
    from hearth.store.license import _LLAMA

    written = []
    for name, text in (report.files or {}).items():
        upper = name.upper()
        target = ("LICENSE" if upper.startswith("LICEN") else "USE_POLICY" if upper.startswith("USE_POLICY")
                  else "NOTICE" if upper.startswith("NOTICE") else None)
        if target and target not in written:
            (tmp / target).write_text(text, encoding="utf-8")
            written.append(target)
    notice = _LLAMA.get(report.family, (None,) * 6)[5]
    if notice and "NOTICE" not in written:
        (tmp / "NOTICE").write_text(notice + "\n", encoding="utf-8")
        written.append("NOTICE")
    return written


def release(model: str, out: Path, opts: ReleaseOptions, on_line=print) -> ReleaseResult:
    from hearth.loader import resolve_named
    from hearth.release import card as C
    from hearth.release import gate as G
    from hearth.release.eu import write_eu
    from hearth.release.licensing import Deployment, check_license
    from hearth.store.common import refuse_overwrite
    from hearth.store.license import _LLAMA
    from hearth.store import lineage as L
    from hearth.tune.lineage import model_digest
    from hearth.weights import open_checkpoint

    if opts.fmt is not None and opts.fmt not in FORMATS:
        raise HearthError(f"--format must be gguf or safetensors, not {opts.fmt!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        refuse_overwrite(out, opts.force)
    gate = G.load_gate(opts.gate) if opts.gate else None
    evals = _read_json(opts.evals, "eval results")
    redteam = _read_json(opts.redteam, "red-team report")
    summary_path = opts.tune_summary or (opts.adapter / "summary.json" if opts.adapter else None)
    summary = _read_json(summary_path, "tune summary") if summary_path and Path(summary_path).is_file() else None
    where = resolve_named(model)
    # what made the model: the adapter's tune run, else the record the weights carry (quantize, merge, export)
    own = L.of_checkpoint(open_checkpoint(where.path))
    made = (summary or {}).get("lineage") if isinstance((summary or {}).get("lineage"), dict) else None
    made = made or own
    lineage = L.training(made)  # the training step the card, the EU summary and the provenance describe
    root = L.root(own) if opts.adapter is None else None
    base_name = root["ref"] if root else where.name  # a stored fine-tune names the model it started from
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    name = opts.name or (f"{where.name}-{opts.adapter.name}" if opts.adapter else where.name)
    lic = check_license(str(where.path), Deployment(name=name, **opts.deployment))
    llama = _LLAMA.get(lic.family)
    base_digest = str(root.get("digest")) if root and root.get("digest") else model_digest(where.path)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        meta = {"general.name": name, "general.base_model.count": 1, "general.base_model.0.name": base_name}
        if made is not None:
            meta[L.KEY] = json.dumps(made, sort_keys=True)
        if lic.family and lic.family != "unknown":
            meta["general.license"] = lic.spdx or lic.family
        if llama:
            meta["general.license.name"] = llama[0]
        relation, _ = _write_weights(where.path, model, name, opts, tmp, meta)
        if opts.adapter is None and L.relation(own):
            relation = L.relation(own)
        if made is not None and (tmp / "model").is_dir():
            (tmp / "model" / L.FILE).write_text(L.to_json(made), encoding="utf-8")
        if "LICENSE" not in _licence_files(lic, tmp) and opts.license_file is not None:
            if not Path(opts.license_file).is_file() or Path(opts.license_file).stat().st_size > MAX_RECORD_BYTES:
                raise HearthError(f"--license-file {opts.license_file}: not a file of at most 16 MiB")
            shutil.copy2(opts.license_file, tmp / "LICENSE")
        if opts.guard_policy is not None:
            if not Path(opts.guard_policy).is_file():
                raise HearthError(f"--guard-policy {opts.guard_policy} not found")
            from hearth.guard.policy import load_policy

            load_policy(opts.guard_policy)  # refuse a malformed policy before it ships
            shutil.copy2(opts.guard_policy, tmp / f"guard-policy{Path(opts.guard_policy).suffix}")
        outcome = None
        if gate is not None:
            present = tuple(sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())) + (
                "README.md",)
            mitigations = ("guard-policy",) if opts.guard_policy is not None else ()
            outcome = G.evaluate(gate, G.Evidence(C.eval_scores(evals), redteam, opts.guard, present, mitigations),
                                 opts.accept_risk)
            for c in outcome.checks:
                if not c.passed:
                    on_line(c.line())
            if outcome.verdict == "refused":
                n = len(outcome.stop_failures) + len(outcome.mitigate_failures)
                raise HearthError(f"release refused by the gate {opts.gate}: {n} threshold{'s' * (n != 1)} missed "
                                  "(above); meet them, ship the named mitigation, or --accept-risk \"reason\"")
        violations = [o for o in lic.obligations if o.violated]
        if violations and not opts.accept_risk:
            for o in violations:
                on_line(f"licence: {o.key}: {o.detail} ({o.clause})")
            raise HearthError(f"the licence check found {len(violations)} violation{'s' * (len(violations) != 1)} "
                              "(above): fix them (e.g. --name) before releasing")
        inputs = C.CardInputs(
            name=name, base_model=base_name, relation=relation, made=L.describe(made) or None, license=lic.family if lic.family != "unknown" else None,
            license_name=llama[0] if llama else lic.spdx, lineage=lineage, summary=summary, evals=evals,
            redteam=redteam, guard=opts.guard, quantization=None, gate=outcome.to_json() if outcome else None,
            obligations=[f"{o.key}: {o.detail} ({o.clause})" for o in lic.obligations if o.applies],
            built_with=llama[3] if llama else None, notice=llama[5] if llama else None,
            use_policy=llama[2] if llama else None)
        from hearth.release.bom import write_bom
        from hearth.release.openness import build_mof, classify_mof, osi_verdict, write_mof
        from hearth.release.provenance import write_provenance

        # openness depends on what is released and under which licence, not on the files' hashes: judged before
        # the card (which states it) is written
        draft = _facts(tmp, name, opts, base_name, base_digest, lic, relation, lineage, started, bool(evals or redteam))
        mof = classify_mof(build_mof(draft))
        osi, why = osi_verdict(draft)
        inputs.openness = [*(f"- {line}" for line in mof.lines()), f"- OSI Open Source AI Definition 1.0: {osi}",
                           *(f"  - {r}" for r in why)]
        (tmp / "README.md").write_text(C.render_card(inputs), encoding="utf-8")
        params, known_as = _params(where.path)
        write_eu(tmp / "eu", name, base_name, params, lineage, summary, known_as)
        facts = _facts(tmp, name, opts, base_name, base_digest, lic, relation, lineage, started, bool(evals or redteam))
        write_mof(facts, tmp / "mof.yml")
        write_bom(facts, tmp / "bom.cdx.json", C.card_data(inputs).to_dict())
        write_provenance(facts, tmp / "provenance.intoto.json", accepted_risk=opts.accept_risk)
        record = {"model": model, "name": name, "base_digest": base_digest, "relation": relation,
                  "license": lic.to_json(), "gate": outcome.to_json() if outcome else None,
                  "accepted_risk": opts.accept_risk, "started": started, "lineage": made,
                  "openness": {"mof_class": mof.label, "osi": osi, "osi_reasons": why},
                  "inputs": {k: str(v) for k, v in (("evals", opts.evals), ("redteam", opts.redteam),
                                                    ("tune_summary", summary_path), ("adapter", opts.adapter)) if v}}
        (tmp / "release.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        signed = False
        if opts.sign_key is not None:
            from hearth.release.signing import sign_folder

            sign_folder(tmp, Path(opts.sign_key))
            signed = True
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return ReleaseResult(out, files, outcome.to_json() if outcome else None, lic.to_json(), signed,
                         [*mof.lines(), f"OSI: {osi}"])


def _params(path: Path) -> tuple[int, str]:
    """The base's parameter count and the name its weights carry (`general.name`, config name)."""
    from hearth.weights import open_checkpoint

    cfg = open_checkpoint(path).config
    return cfg.num_params(), cfg.name or ""


def _facts(tmp: Path, name: str, opts: ReleaseOptions, base: str, base_digest: str, lic, relation: str,
           lineage: dict | None, started: str, evaluated: bool):
    from importlib.metadata import version

    from hearth.release.facts import Artifact, Dataset, ReleaseFacts

    arts = [Artifact(p.relative_to(tmp).as_posix(), _sha256(p), p.stat().st_size)
            for p in sorted(tmp.rglob("*")) if p.is_file()]
    lid = lic.family if lic.family != "unknown" else None
    data = [Dataset(Path(d["path"]).name, d["sha256"], d["rows"], d["path"]) for d in (lineage or {}).get("data", [])]
    components = {"Model parameters (Final)": lid, "Model card": lid, "Model architecture": lid}
    if evaluated:  # the card's benchmark and safety figures, under the card's licence
        components["Evaluation results"] = lid
    if data:
        components["Datasets"] = None  # the fine-tuning data is the provider's, not released here
    return ReleaseFacts(
        name=name, version=opts.version, description=f"{relation} of {base}, released with hearth",
        base_model=base, base_digest=base_digest, base_license=lid, license=lid, relation=relation,
        artifacts=arts, datasets=data, training=(lineage or {}).get("settings") or {},
        builder_version=version("hearth"), started=started,
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), components=components)
