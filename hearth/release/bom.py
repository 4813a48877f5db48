"""The release's bill of materials: a CycloneDX 1.6 ML-BOM (bom.cdx.json), so supply-chain tools can read a model.

Built with the CycloneDX project's own library (cyclonedx-python-lib) where it has the fields, and checked with its
JSON-schema validator before it is written: a BOM that does not validate is refused, never shipped.

What it says:
- metadata: hearth as the tool, the release as the component the BOM describes.
- the model: a `machine-learning-model` component with its licence (an SPDX id where there is one, else the
  licence's name, as for the Llama community licences), the SHA-256 of its weights, every release file as a nested
  `file` component with its hash, the model card and licence as external references, the training settings as
  `hearth:` properties, and the base model in its pedigree (ancestors).
- the base model and the training datasets as components of their own (datasets as `data`, by digest: the data
  itself is not shipped), the model depending on its base.
- `modelCard` (approach, task, architecture, datasets, inputs/outputs, performance metrics, energy): the library has
  no model for it (nor for a data component's `data`), so both are added to the JSON after serialisation, then the
  whole document is validated.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from functools import cache
from pathlib import Path
from typing import Any

from hearth.errors import HearthError
from hearth.release.facts import Artifact, ReleaseFacts, hf_repo_id, sha256_hex, weight_artifacts

MODEL_REF = "model"
BASE_REF = "base-model"
ANCESTOR_REF = "base-model-ancestor"
TUNED = ("adapter", "merge", "finetune")  # relations whose weights were trained (on labelled chat examples)


def build_bom(facts: ReleaseFacts, model_card: dict | None = None) -> dict[str, Any]:
    """The ML-BOM as a JSON document (not yet validated)."""
    from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentScope, ComponentType, Pedigree
    from cyclonedx.model.contact import OrganizationalEntity
    from cyclonedx.output.json import JsonV1Dot6

    def sha(value: str, what: str) -> list:  # checked here: a malformed digest is named, not passed on
        return [HashType(alg=HashAlgorithm.SHA_256, content=sha256_hex(value, what))]

    files = {a.path for a in facts.artifacts}
    weights = weight_artifacts(facts)
    refs = []
    if "README.md" in files:
        refs.append(ExternalReference(type=ExternalReferenceType.MODEL_CARD, url=XsUri("README.md"),
                                      comment="the model card"))
    for name in ("LICENSE", "USE_POLICY", "NOTICE"):
        if name in files:
            refs.append(ExternalReference(type=ExternalReferenceType.LICENSE, url=XsUri(name),
                                          comment={"LICENSE": "the licence text", "NOTICE": "the notice to keep",
                                                   "USE_POLICY": "the acceptable use policy"}[name]))
    base_refs = []
    if repo := hf_repo_id(facts.base_model):
        base_refs.append(ExternalReference(type=ExternalReferenceType.DISTRIBUTION,
                                           url=XsUri(f"https://huggingface.co/{repo}")))

    def base_component(ref: str) -> Component:
        return Component(type=ComponentType.MACHINE_LEARNING_MODEL, name=facts.base_model, bom_ref=ref,
                         hashes=sha(facts.base_digest, "the base model"),
                         licenses=_licenses(facts.base_license), external_references=base_refs,
                         scope=ComponentScope.REQUIRED if facts.relation == "adapter" else None,
                         description="the base model" + (": the adapter runs on it" if facts.relation == "adapter"
                                                         else f" this {facts.relation} derives from"))

    model = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL, name=facts.name, version=facts.version, bom_ref=MODEL_REF,
        description=facts.description, licenses=_licenses(facts.license),
        hashes=sha(weights[0].sha256, weights[0].path) if len(weights) == 1 else None,
        supplier=OrganizationalEntity(name=facts.producer) if facts.producer else None,
        external_references=refs,
        properties=[Property(name="hearth:relation", value=facts.relation)]
        + [Property(name=f"hearth:training:{k}", value=_text(v)) for k, v in sorted(facts.training.items())],
        pedigree=Pedigree(ancestors=[base_component(ANCESTOR_REF)], notes=f"{facts.relation} of {facts.base_model}"),
        components=[_file(a, sha) for a in sorted(facts.artifacts, key=lambda a: a.path)])
    base = base_component(BASE_REF)
    datasets = []
    for i, ds in enumerate(facts.datasets):
        datasets.append(Component(
            type=ComponentType.DATA, name=ds.name, bom_ref=_dataset_ref(i, ds.name),
            hashes=sha(ds.sha256, f"dataset {ds.name}"), licenses=_licenses(ds.license),
            scope=ComponentScope.EXCLUDED, description="fine-tuning data, named by its digest (not shipped)",
            properties=[Property(name="hearth:rows", value=str(ds.rows))]))
    tool = Component(type=ComponentType.APPLICATION, name="hearth", version=facts.builder_version,
                     description="built this release")
    bom = Bom(serial_number=_serial(facts), metadata=BomMetaData(timestamp=_time(facts.finished), component=model),
              components=[base, *datasets])
    bom.metadata.tools.components.add(tool)
    bom.register_dependency(model, [base])
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    for entry, ds in zip(_components_by_ref(doc, [_dataset_ref(i, d.name) for i, d in enumerate(facts.datasets)]),
                         facts.datasets):
        entry["data"] = [{"type": "dataset", "name": ds.name}]
    doc["metadata"]["component"]["modelCard"] = model_card_json(facts, model_card)
    return doc


def model_card_json(facts: ReleaseFacts, card: dict | None) -> dict[str, Any]:
    """CycloneDX's `modelCard` from the facts and the model card's metadata as Hugging Face writes it
    (ModelCardData.to_dict(): pipeline_tag, datasets, model-index with the eval results)."""
    card = card or {}
    params: dict[str, Any] = {}
    if facts.relation in TUNED and facts.datasets:
        params["approach"] = {"type": "supervised"}  # fine-tuned on prompt/answer examples
    params["task"] = card.get("pipeline_tag") or _index_task(card) or "text-generation"
    params["architectureFamily"] = "transformer"
    params["modelArchitecture"] = "LlamaForCausalLM"  # decoder-only Llama: the one architecture hearth builds
    data = [{"ref": _dataset_ref(i, ds.name)} for i, ds in enumerate(facts.datasets)]
    if not data:
        named = card.get("datasets") or []
        data = [{"type": "dataset", "name": str(n)} for n in ([named] if isinstance(named, str) else named)]
    if data:
        params["datasets"] = data
    params["inputs"] = [{"format": "text"}]
    params["outputs"] = [{"format": "text"}]
    out: dict[str, Any] = {"bom-ref": "model-card", "modelParameters": params}
    metrics = _metrics(card)
    if metrics:
        out["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    energy = facts.training.get("energy_kwh")
    considerations: dict[str, Any] = {}
    if isinstance(energy, int | float) and not isinstance(energy, bool):
        kwh = {"value": float(energy), "unit": "kWh"}
        considerations["environmentalConsiderations"] = {"energyConsumptions": [{
            "activity": "fine-tuning" if facts.relation in TUNED else "other",
            # the schema asks who supplied the energy: hearth measures the draw, not the grid behind it
            "energyProviders": [{"organization": {"name": "unknown"}, "energySource": "unknown",
                                 "energyProvided": kwh}],
            "activityEnergyCost": kwh}]}
    if considerations:
        out["considerations"] = considerations
    return out


def _metrics(card: dict) -> list[dict[str, str]]:
    out = []
    for entry in card.get("model-index") or []:
        for result in (entry or {}).get("results") or []:
            ds = (result or {}).get("dataset") or {}
            for m in (result or {}).get("metrics") or []:
                if isinstance(m, dict) and m.get("type") is not None and m.get("value") is not None:
                    row = {"type": str(m["type"]), "value": _text(m["value"])}
                    if ds.get("name") or ds.get("type"):
                        row["slice"] = str(ds.get("name") or ds.get("type"))
                    out.append(row)
    return out


def _index_task(card: dict) -> str | None:
    for entry in card.get("model-index") or []:
        for result in (entry or {}).get("results") or []:
            task = ((result or {}).get("task") or {}).get("type")
            if task:
                return str(task)
    return None


def validate_bom(doc: dict[str, Any]) -> None:
    """Check the BOM with cyclonedx-python-lib's strict CycloneDX 1.6 JSON validator; HearthError on a fault."""
    error = _validator().validate_str(json.dumps(doc))
    if error is not None:
        data = error.data
        where = "/".join(str(p) for p in getattr(data, "absolute_path", ())) or "the document"
        message = " ".join(str(getattr(data, "message", data)).split())
        raise HearthError(f"bom.cdx.json is not valid CycloneDX 1.6 at {where}: {message[:240]}")


def write_bom(facts: ReleaseFacts, path: Path | str, model_card: dict | None = None) -> dict[str, Any]:
    """Write bom.cdx.json (to `path`, or into it when it is a folder) once it validates."""
    from hearth.fsutil import atomic_write

    doc = build_bom(facts, model_card)
    validate_bom(doc)
    path = Path(path)
    if path.is_dir():
        path = path / "bom.cdx.json"
    atomic_write(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), durable=False)
    return doc


@cache
def _validator():
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    return JsonStrictValidator(SchemaVersion.V1_6)


def _licenses(lid: str | None) -> list:
    """An SPDX id where SPDX has the licence; else its name (the Llama community licences have no SPDX id)."""
    from cyclonedx.model.license import DisjunctiveLicense, LicenseAcknowledgement
    from cyclonedx.spdx import fixup_id

    if not lid:
        return []
    if spdx := fixup_id(lid):
        return [DisjunctiveLicense(id=spdx, acknowledgement=LicenseAcknowledgement.DECLARED)]
    from hearth.store.license import normalize_id, title

    return [DisjunctiveLicense(name=title(normalize_id(lid) or lid) or lid,
                               acknowledgement=LicenseAcknowledgement.DECLARED)]


def _file(a: Artifact, sha) -> Any:
    from cyclonedx.model.component import Component, ComponentType

    return Component(type=ComponentType.FILE, name=a.path, bom_ref=f"file:{a.path}",
                     hashes=sha(a.sha256, a.path))


def _dataset_ref(i: int, name: str) -> str:
    return f"dataset-{i}:{name}"


def _components_by_ref(doc: dict, refs: list[str]) -> list[dict]:
    by_ref = {c.get("bom-ref"): c for c in doc.get("components", [])}
    return [by_ref[r] for r in refs]


def _serial(facts: ReleaseFacts) -> uuid.UUID:
    """The same release (name, version, files) gets the same serial number: a rebuild is recognisable."""
    key = "\n".join([facts.name, facts.version, *sorted(f"{a.path} {a.sha256}" for a in facts.artifacts)])
    return uuid.uuid5(uuid.NAMESPACE_URL, "hearth-release:" + key)


def _time(iso: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        raise HearthError(f"the release's finish time is not an ISO 8601 time: {iso!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
