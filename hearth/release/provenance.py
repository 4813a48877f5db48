"""Where the weights came from, in the form supply-chain verifiers read: an in-toto Statement with SLSA Provenance v1.

provenance.intoto.json (unsigned here; `hearth release --sign` signs the whole folder) says:
- subject: each weights file of the release, by name and sha256;
- buildDefinition: hearth's release build type, what the person releasing chose (externalParameters: base model,
  relation, training settings, and the risk they accepted over the gate, if any: no silent override), what hearth
  decided itself (internalParameters: the licence and where it comes from), and what went in (resolvedDependencies:
  the base model and each training dataset by digest);
- runDetails: the builder (hearth and its version), when the build ran, and the release's other files as byproducts.

Field names follow in-toto Statement v1 and SLSA Provenance v1 exactly (https://slsa.dev/spec/v1.0/provenance).
hearth has no public web home, so its build type and builder ids are URNs: they name the type and version; this
docstring documents the type's parameters.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import uuid
from pathlib import Path
from typing import Any

from hearth.errors import HearthError
from hearth.release.facts import ReleaseFacts, hf_repo_id, sha256_hex, weight_artifacts

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:hearth:buildtype:release:v1"
BUILDER_PREFIX = "urn:hearth:builder:"
MAX_ACCEPTED_RISK = 2000


def build_provenance(facts: ReleaseFacts, accepted_risk: str | None = None) -> dict[str, Any]:
    """The in-toto Statement (a dict), checked for the digests and times the spec requires."""
    weights = weight_artifacts(facts)
    if not weights:
        raise HearthError("the release has no weights file (.safetensors, .gguf, ...): provenance needs a subject")
    if accepted_risk is not None and (not accepted_risk.strip() or len(accepted_risk) > MAX_ACCEPTED_RISK):
        raise HearthError(f"--accept-risk needs a reason in words (1 to {MAX_ACCEPTED_RISK} characters)")
    subjects = [{"name": a.path, "digest": {"sha256": sha256_hex(a.sha256, a.path)}} for a in weights]
    names = {a.path for a in weights}
    byproducts = [{"name": a.path, "digest": {"sha256": sha256_hex(a.sha256, a.path)}}
                  for a in sorted(facts.artifacts, key=lambda a: a.path) if a.path not in names]

    base: dict[str, Any] = {"name": facts.base_model}
    if repo := hf_repo_id(facts.base_model):
        base["uri"] = f"https://huggingface.co/{repo}"
    base["digest"] = {"sha256": sha256_hex(facts.base_digest, "the base model")}
    if facts.base_license:
        base["annotations"] = {"license": facts.base_license}
    dependencies = [base]
    for ds in facts.datasets:
        entry: dict[str, Any] = {"name": ds.name, "digest": {"sha256": sha256_hex(ds.sha256, f"dataset {ds.name}")},
                                 "annotations": {"rows": ds.rows}}
        if ds.license:
            entry["annotations"]["license"] = ds.license
        dependencies.append(entry)

    external: dict[str, Any] = {"base_model": facts.base_model, "relation": facts.relation, "name": facts.name,
                                "version": facts.version, "training": dict(facts.training)}
    if accepted_risk is not None:
        external["accepted_risk"] = accepted_risk.strip()
    internal = {"license": facts.license, "base_license": facts.base_license,
                "license_inherited": facts.license is not None and facts.license == facts.base_license}
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": f"{BUILDER_PREFIX}hearth@{facts.builder_version}",
                            "version": {"hearth": facts.builder_version, "python": platform.python_version()}},
                "metadata": {"invocationId": f"urn:uuid:{uuid.uuid4()}", "startedOn": _timestamp(facts.started),
                             "finishedOn": _timestamp(facts.finished)},
                "byproducts": byproducts,
            },
        },
    }


def write_provenance(facts: ReleaseFacts, path: Path | str, accepted_risk: str | None = None) -> dict[str, Any]:
    """Write provenance.intoto.json (to `path`, or into it when it is a folder)."""
    from hearth.fsutil import atomic_write

    doc = build_provenance(facts, accepted_risk)
    path = Path(path)
    if path.is_dir():
        path = path / "provenance.intoto.json"
    atomic_write(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), durable=False)
    return doc


def _timestamp(iso: str) -> str:
    """RFC 3339 in UTC ("2025-01-31T12:00:00Z"), as SLSA's startedOn/finishedOn require."""
    try:
        t = dt.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        raise HearthError(f"not an ISO 8601 time: {iso!r}") from None
    t = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
