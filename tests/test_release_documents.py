"""The release's three documents: mof.yml (Model Openness Framework), bom.cdx.json (CycloneDX 1.6 ML-BOM) and
provenance.intoto.json (in-toto Statement + SLSA Provenance v1), each checked with an outside validator: MOT's JSON
schema, cyclonedx-python-lib's validator, the in-toto attestation protobufs."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources

import jsonschema
import pytest
import yaml

from hearth.errors import HearthError
from hearth.release.bom import build_bom, validate_bom, write_bom
from hearth.release.facts import Artifact, Dataset, ReleaseFacts
from hearth.release.openness import classify_mof, osi_verdict, validate_mof, write_mof
from hearth.release.provenance import write_provenance

H = {c: c * 64 for c in "abcdef0123456789"}

# The model card's metadata as huggingface_hub's ModelCardData.to_dict() writes it (hearth.release.card.card_data).
HF_CARD = {
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "peft", "license": "apache-2.0",
    "tags": ["hearth"], "base_model_relation": "adapter",
    "model-index": [{"name": "smol-support", "results": [
        {"task": {"type": "text-generation"}, "dataset": {"name": "arc_easy", "type": "arc_easy"},
         "metrics": [{"type": "acc", "value": 0.6125}], "source": {"url": "https://github.com/allenai/olmes",
                                                                  "name": "hearth eval"}},
        {"task": {"type": "text-generation"}, "dataset": {"name": "gsm8k", "type": "gsm8k"},
         "metrics": [{"type": "exact_match_strict", "value": 0.031}]}]}],
}


@pytest.fixture
def apache_lora() -> ReleaseFacts:
    """An Apache-2.0 base with a LoRA adapter released as it is (what `hearth release --adapter` writes)."""
    return ReleaseFacts(
        name="smol-support", version="1.0.0", description="adapter of SmolLM2-135M-Instruct for support chats",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct", base_digest="sha256:" + H["a"],
        base_license="apache-2.0", license="apache-2.0", relation="adapter",
        artifacts=[Artifact("adapter_model.safetensors", H["b"], 1_843_200), Artifact("adapter_config.json", H["c"], 640),
                   Artifact("README.md", H["d"], 4_000), Artifact("LICENSE", H["e"], 11_357)],
        datasets=[Dataset("support.jsonl", H["f"], 1200, "/home/me/data/support.jsonl")],
        training={"steps": 300, "lr": 2e-4, "rank": 8, "tokens": 410_000, "seconds": 812.5, "energy_kwh": 0.042},
        builder_version="0.1.0", started="2025-03-01T09:00:00+00:00", finished="2025-03-01T09:14:03+00:00",
        components={"Model parameters (Final)": "apache-2.0", "Model card": "apache-2.0",
                    "Model architecture": "apache-2.0", "Datasets": None})


@pytest.fixture
def llama_merge() -> ReleaseFacts:
    """A Llama 3.2 fine-tune merged into sharded safetensors: the Llama 3.2 Community License travels with it."""
    return ReleaseFacts(
        name="llama-support", version="2.1.0", description="Llama 3.2 1B fine-tuned for support chats",
        base_model="meta-llama/Llama-3.2-1B-Instruct", base_digest="sha256:" + H["1"],
        base_license="llama3.2", license="llama3.2", relation="merge",
        artifacts=[Artifact("model/model-00001-of-00002.safetensors", H["2"], 2_000_000_000),
                   Artifact("model/model-00002-of-00002.safetensors", H["3"], 471_000_000),
                   Artifact("model/config.json", H["4"], 900), Artifact("README.md", H["5"], 5_000),
                   Artifact("LICENSE", H["6"], 7_700), Artifact("USE_POLICY", H["7"], 4_700),
                   Artifact("NOTICE", H["8"], 130)],
        datasets=[Dataset("support.jsonl", H["f"], 1200), Dataset("refusals.jsonl", H["9"], 300, license="cc-by-4.0")],
        training={"steps": 500, "lr": 1e-4, "rank": 16},
        builder_version="0.1.0", started="2025-03-02T10:00:00Z", finished="2025-03-02T11:30:00Z",
        components={"Model parameters (Final)": "llama3.2", "Model card": "llama3.2", "Model architecture": "llama3.2",
                    "Datasets": None})


# --- mof.yml ------------------------------------------------------------------------------------------------------


def _mot_schema() -> dict:
    return json.loads(resources.files("hearth.release").joinpath("data/mof_schema.json").read_text("utf-8"))


def test_mof_file_matches_mots_schema_and_format(apache_lora, tmp_path):
    doc = write_mof(apache_lora, tmp_path)
    written = yaml.safe_load((tmp_path / "mof.yml").read_text("utf-8"))
    assert written == doc
    jsonschema.Draft202012Validator(_mot_schema(), format_checker=jsonschema.FormatChecker()).validate(written)
    assert written["framework"] == {"name": "Model Openness Framework", "version": "1.0", "date": "2024-12-15"}
    rel = written["release"]
    assert isinstance(rel["date"], str) and rel["date"] == "2025-03-01"  # a YAML date would fail MOT's schema
    assert rel["license"] == {"distribution": {"name": "Apache-2.0", "path": "LICENSE"}}
    assert (rel["type"], rel["architecture"], rel["origin"]) == ("language", "transformer decoder",
                                                                 "HuggingFaceTB/SmolLM2-135M-Instruct")
    by_name = {c["name"]: c for c in rel["components"]}
    assert [c["name"] for c in rel["components"]] == ["Model architecture", "Model parameters (Final)", "Datasets",
                                                       "Model card"]  # MOT's display order
    assert by_name["Model parameters (Final)"] == {
        "name": "Model parameters (Final)", "description": "Trained model parameters, weights and biases",
        "license": "Apache-2.0", "license_path": "LICENSE", "component_path": "adapter_model.safetensors"}
    assert by_name["Datasets"]["license"] == "unlicensed"
    assert by_name["Model card"]["component_path"] == "README.md"


def test_apache_lora_reaches_no_mof_class_and_says_what_class_iii_lacks(apache_lora, tmp_path):
    verdict = classify_mof(write_mof(apache_lora, tmp_path / "mof.yml"))
    print(verdict.lines())
    assert (verdict.mof_class, verdict.name, verdict.label) == (0, "none", "Unclassified")
    assert verdict.progress == {3: 50.0, 2: 0.0, 1: 0.0}  # 3 of Class III's 6 required components
    assert verdict.next_class == 3
    assert verdict.missing == ("Data card", "Technical report", "Evaluation results")
    assert verdict.not_open == () and verdict.unlicensed == ()
    # MOT counts Apache-2.0 on weights as open, but it is a code licence on a data component: a warning
    assert verdict.not_type_appropriate == ("Model parameters (Final)",)
    assert "Class III needs Data card: not released" in verdict.lines()


def test_llama_fine_tune_is_not_open_by_mof(llama_merge, tmp_path):
    doc = write_mof(llama_merge, tmp_path / "mof.yml")
    validate_mof(doc)
    params = next(c for c in doc["release"]["components"] if c["name"] == "Model parameters (Final)")
    assert params["license"] == "Llama 3.2 Community License"  # as MOT's own Llama-3.2 files spell it
    assert params["component_path"] == "model/"
    verdict = classify_mof(doc)
    print(verdict.lines())
    assert verdict.mof_class == 0 and verdict.name == "none"
    assert verdict.progress[3] == 0.0
    assert set(verdict.not_open) == {"Model architecture: Llama 3.2 Community License",
                                     "Model parameters (Final): Llama 3.2 Community License",
                                     "Model card: Llama 3.2 Community License"}


def test_openly_licensed_documents_reach_class_iii_and_list_class_ii(apache_lora, tmp_path):
    facts = replace(apache_lora, components={
        "Model architecture": "apache-2.0", "Model parameters (Final)": "cdla-permissive-2.0",
        "Model card": "cc-by-4.0", "Data card": "cc-by-4.0", "Technical report": "cc-by-4.0",
        "Evaluation results": "cc0-1.0", "Training code": "apache-2.0", "Evaluation data": "llama3.2"})
    verdict = classify_mof(write_mof(facts, tmp_path / "mof.yml"))
    print(verdict.lines())
    assert (verdict.mof_class, verdict.name, verdict.label) == (3, "Class III", "Class III - Open Model")
    assert verdict.next_class == 2
    assert verdict.missing == ("Inference code", "Evaluation code")
    assert verdict.not_open == ("Evaluation data: Llama 3.2 Community License",)
    assert verdict.progress[2] == 70.0  # 7 of Class II's 10: the Llama licence on the evaluation data does not count
    assert "Class II needs Evaluation data under an open licence (now: Llama 3.2 Community License)" in verdict.lines()


# Two of MOT's own test models (Test_Data/, MIT licence, descriptions and paths left out) with the classification
# MOT's server gave them in Test_Data/expected_results.json.
MOT_CLASS2 = """
framework: {name: Model Openness Framework, version: '1.0', date: '2024-12-15'}
release:
  name: Class2RTestFile
  producer: Test
  license: {document: {name: CC0-1.0, path: https://example.com/global_license_0}}
  components:
  - {name: Model architecture, license: MIT}
  - {name: Training code, license: AFL-3.0}
  - {name: Inference code, license: NCSA}
  - {name: Evaluation code, license: ECL-1.0}
  - {name: Supporting libraries and tools, license: Apache-2.0}
  - {name: Model parameters (Final), license: CC-BY-3.0-NL}
  - {name: Evaluation data, license: CC-BY-3.0-US}
  - {name: Model card, license: CC-BY-SA-3.0}
  - {name: Data card, license: CC-BY-4.0}
  - {name: Research paper, license: CC-BY-SA-3.0}
  - {name: Evaluation results, license: CC-BY-4.0}
"""
MOT_CLASS3 = """
framework: {name: Model Openness Framework, version: '1.0', date: '2024-12-15'}
release:
  name: Class3RTestFile
  producer: Test
  license: {document: {name: CC-BY-SA-4.0, path: https://example.com/global_license_0}}
  components:
  - {name: Model architecture, license: Apache-1.0}
  - {name: Model parameters (Final), license: ODbL-1.0}
  - {name: Model card, license: CC-BY-4.0}
  - {name: Data card, license: CC0-1.0}
  - {name: Research paper, license: CC-BY-4.0}
  - {name: Evaluation results, license: CC0-1.0}
"""


@pytest.mark.parametrize("text,klass,progress", [
    (MOT_CLASS2, 2, {1: 10 / 13 * 100, 2: 100.0, 3: 100.0}),  # the research paper stands in for the report
    (MOT_CLASS3, 3, {1: 0.0, 2: 60.0, 3: 100.0}),
])
def test_classification_matches_mots_own_results(text, klass, progress):
    doc = yaml.safe_load(text)
    validate_mof(doc)
    verdict = classify_mof(doc)
    assert verdict.mof_class == klass
    assert verdict.progress == pytest.approx(progress)


def test_mof_refuses_what_mot_cannot_read(apache_lora, tmp_path):
    with pytest.raises(HearthError, match="not a Model Openness Framework component: Weights"):
        write_mof(replace(apache_lora, components={"Weights": "apache-2.0"}), tmp_path / "mof.yml")
    with pytest.raises(HearthError, match="schema at release.*producer"):
        validate_mof({"framework": {"name": "Model Openness Framework", "version": "1.0", "date": "2024-12-15"},
                      "release": {"name": "x", "license": {}, "components": []}})
    with pytest.raises(HearthError, match="release/date"):
        validate_mof({"framework": {"name": "Model Openness Framework", "version": "1.0", "date": "2024-12-15"},
                      "release": {"name": "x", "license": {}, "producer": "", "components": [],
                                  "date": "1 March 2025"}})
    assert not (tmp_path / "mof.yml").exists()


# --- the OSI's Open Source AI Definition --------------------------------------------------------------------------


def test_llama_fine_tune_is_open_weights_not_open_source(llama_merge):
    verdict, reasons = osi_verdict(llama_merge)
    print(verdict, reasons)
    assert verdict == "not open source: open weights"
    assert any("Llama 3.2 Community License, not an OSI-approved licence" in r and "acceptable use policy" in r
               for r in reasons)
    assert "code not released: Training code" in reasons


def test_apache_weights_without_data_and_code_are_not_open_source_ai(apache_lora):
    verdict, reasons = osi_verdict(apache_lora)
    print(verdict, reasons)
    assert verdict == "not open source: open weights"
    assert not any("parameters are under" in r for r in reasons)  # Apache-2.0 is OSI-approved: not the reason
    assert any(r.startswith("the data information (Datasets) is not under an open licence") for r in reasons)
    assert {"code not released: Training code", "code not released: Data preprocessing code",
            "code not released: Inference code"} <= set(reasons)


def test_data_information_code_and_parameters_make_open_source_ai(apache_lora):
    facts = replace(apache_lora, components={
        "Model parameters (Final)": "apache-2.0", "Model architecture": "apache-2.0", "Training code": "apache-2.0",
        "Inference code": "apache-2.0", "Evaluation code": "mit", "Data preprocessing code": "apache-2.0",
        "Supporting libraries and tools": "apache-2.0", "Data card": "cc-by-4.0"})
    verdict, reasons = osi_verdict(facts)
    assert verdict == "open source AI"
    assert "HuggingFaceTB/SmolLM2-135M-Instruct's own training data information" in reasons[0]
    verdict, reasons = osi_verdict(replace(facts, components={**facts.components, "Evaluation code": "llama3.2"}))
    assert verdict == "not open source: open weights"
    assert reasons == ["code not under an OSI-approved licence: Evaluation code (Llama 3.2 Community License)"]


# --- bom.cdx.json -------------------------------------------------------------------------------------------------


def _cyclonedx_errors(doc: dict) -> list[str]:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(doc), all_errors=True)
    return [e.data.message for e in errors or ()]


def test_bom_is_a_valid_cyclonedx_ml_bom_with_model_card_and_hashes(apache_lora, tmp_path):
    doc = write_bom(apache_lora, tmp_path, HF_CARD)
    written = json.loads((tmp_path / "bom.cdx.json").read_text("utf-8"))
    assert written == doc
    assert _cyclonedx_errors(written) == []
    assert (written["bomFormat"], written["specVersion"]) == ("CycloneDX", "1.6")
    assert written["metadata"]["tools"]["components"][0].items() >= {"type": "application", "name": "hearth",
                                                                     "version": "0.1.0"}.items()
    model = written["metadata"]["component"]
    assert (model["type"], model["name"], model["version"]) == ("machine-learning-model", "smol-support", "1.0.0")
    assert model["hashes"] == [{"alg": "SHA-256", "content": H["b"]}]  # the one weights file
    assert model["licenses"] == [{"license": {"id": "Apache-2.0", "acknowledgement": "declared"}}]
    files = {c["name"]: c["hashes"][0]["content"] for c in model["components"]}
    assert files == {a.path: a.sha256 for a in apache_lora.artifacts}
    assert {(r["type"], r["url"]) for r in model["externalReferences"]} == {("model-card", "README.md"),
                                                                           ("license", "LICENSE")}
    assert {"name": "hearth:training:rank", "value": "8"} in model["properties"]
    ancestor = model["pedigree"]["ancestors"][0]
    assert (ancestor["name"], ancestor["hashes"][0]["content"]) == ("HuggingFaceTB/SmolLM2-135M-Instruct", H["a"])

    comps = {c["bom-ref"]: c for c in written["components"]}
    base, data = comps["base-model"], comps["dataset-0:support.jsonl"]
    assert base["type"] == "machine-learning-model" and base["scope"] == "required"  # an adapter needs its base
    assert base["externalReferences"] == [{"type": "distribution",
                                           "url": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"}]
    assert (data["type"], data["hashes"][0]["content"], data["data"]) == (
        "data", H["f"], [{"type": "dataset", "name": "support.jsonl"}])
    assert "/home/me" not in json.dumps(written)  # the maker's local paths stay home
    assert {"ref": "model", "dependsOn": ["base-model"]} in written["dependencies"]

    card = model["modelCard"]
    assert card["modelParameters"] == {
        "approach": {"type": "supervised"}, "task": "text-generation", "architectureFamily": "transformer",
        "modelArchitecture": "LlamaForCausalLM", "datasets": [{"ref": "dataset-0:support.jsonl"}],
        "inputs": [{"format": "text"}], "outputs": [{"format": "text"}]}
    assert card["quantitativeAnalysis"]["performanceMetrics"] == [
        {"type": "acc", "value": "0.6125", "slice": "arc_easy"},
        {"type": "exact_match_strict", "value": "0.031", "slice": "gsm8k"}]
    energy = card["considerations"]["environmentalConsiderations"]["energyConsumptions"][0]
    assert (energy["activity"], energy["activityEnergyCost"]) == ("fine-tuning", {"value": 0.042, "unit": "kWh"})


def test_llama_bom_names_its_licence_and_has_no_single_model_hash(llama_merge, tmp_path):
    doc = write_bom(llama_merge, tmp_path / "bom.cdx.json", None)
    assert _cyclonedx_errors(doc) == []
    model = doc["metadata"]["component"]
    # no SPDX id exists for the Llama licence: its name, never a made-up id
    assert model["licenses"] == [{"license": {"name": "Llama 3.2 Community License", "acknowledgement": "declared"}}]
    assert "hashes" not in model  # two shards: each file carries its own
    assert len([c for c in model["components"] if c["name"].endswith(".safetensors")]) == 2
    assert {r["url"] for r in model["externalReferences"]} == {"README.md", "LICENSE", "USE_POLICY", "NOTICE"}
    comps = {c["bom-ref"]: c for c in doc["components"]}
    assert "scope" not in comps["base-model"]  # merged: the base is an ancestor, not needed to run
    assert comps["dataset-1:refusals.jsonl"]["licenses"] == [{"license": {"id": "CC-BY-4.0",
                                                                          "acknowledgement": "declared"}}]
    assert "quantitativeAnalysis" not in model["modelCard"]  # no evals given: no numbers made up
    assert [d["ref"] for d in model["modelCard"]["modelParameters"]["datasets"]] == [
        "dataset-0:support.jsonl", "dataset-1:refusals.jsonl"]
    assert doc["serialNumber"] == build_bom(llama_merge)["serialNumber"]  # the same release, the same serial


def test_invalid_bom_is_refused(apache_lora, tmp_path):
    bad = replace(apache_lora, artifacts=[Artifact("adapter_model.safetensors", "not-a-digest", 10)])
    with pytest.raises(HearthError, match="adapter_model.safetensors has no valid sha256"):
        write_bom(bad, tmp_path / "bom.cdx.json", HF_CARD)
    # what the library's validator catches: a tampered hash, and a model card field of the wrong type
    doc = build_bom(apache_lora, HF_CARD)
    doc["metadata"]["component"]["hashes"][0]["content"] = "zz"
    with pytest.raises(HearthError, match=r"not valid CycloneDX 1\.6 at metadata/component/hashes/0/content"):
        validate_bom(doc)
    with pytest.raises(HearthError, match="not valid CycloneDX 1.6 at metadata/component/modelCard"):
        write_bom(apache_lora, tmp_path / "bom.cdx.json", {"pipeline_tag": ["text-generation"]})
    assert not (tmp_path / "bom.cdx.json").exists()


# --- provenance.intoto.json ---------------------------------------------------------------------------------------


def _check_with_in_toto(doc: dict) -> None:
    """Parse with the in-toto attestation protobufs and require the round trip to give the same JSON: any field
    named otherwise than the spec (snake_case, a typo) would not survive it."""
    pytest.importorskip("in_toto_attestation")
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    statement = json_format.ParseDict(doc, statement_pb2.Statement())
    Statement.copy_from_pb(statement).validate()
    predicate = json_format.ParseDict(doc["predicate"], provenance_pb2.Provenance())
    assert json_format.MessageToDict(predicate) == doc["predicate"]
    assert json_format.MessageToDict(statement)["subject"] == doc["subject"]


def test_provenance_is_an_in_toto_statement_with_slsa_provenance(apache_lora, tmp_path):
    doc = write_provenance(apache_lora, tmp_path)
    assert json.loads((tmp_path / "provenance.intoto.json").read_text("utf-8")) == doc
    _check_with_in_toto(doc)
    assert set(doc) == {"_type", "subject", "predicateType", "predicate"}
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == "https://slsa.dev/provenance/v1"
    assert doc["subject"] == [{"name": "adapter_model.safetensors", "digest": {"sha256": H["b"]}}]
    build, run = doc["predicate"]["buildDefinition"], doc["predicate"]["runDetails"]
    assert set(build) == {"buildType", "externalParameters", "internalParameters", "resolvedDependencies"}
    assert build["buildType"].startswith("urn:hearth:")
    assert build["externalParameters"]["training"] == apache_lora.training
    assert "accepted_risk" not in build["externalParameters"]
    assert build["resolvedDependencies"] == [
        {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "uri": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
         "digest": {"sha256": H["a"]}, "annotations": {"license": "apache-2.0"}},
        {"name": "support.jsonl", "digest": {"sha256": H["f"]}, "annotations": {"rows": 1200}}]
    assert run["builder"]["id"].endswith("hearth@0.1.0") and run["builder"]["version"]["hearth"] == "0.1.0"
    assert set(run["metadata"]) == {"invocationId", "startedOn", "finishedOn"}
    assert (run["metadata"]["startedOn"], run["metadata"]["finishedOn"]) == ("2025-03-01T09:00:00Z",
                                                                           "2025-03-01T09:14:03Z")
    assert {b["name"] for b in run["byproducts"]} == {"adapter_config.json", "README.md", "LICENSE"}


def test_provenance_records_accepted_risk_and_every_shard(llama_merge, tmp_path):
    reason = "over-refusal 0.34 above the gate's 0.30: support staff review every answer"
    doc = write_provenance(llama_merge, tmp_path / "provenance.intoto.json", accepted_risk=reason)
    _check_with_in_toto(doc)
    assert doc["predicate"]["buildDefinition"]["externalParameters"]["accepted_risk"] == reason
    assert [s["name"] for s in doc["subject"]] == ["model/model-00001-of-00002.safetensors",
                                                   "model/model-00002-of-00002.safetensors"]
    deps = doc["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert [d["name"] for d in deps] == ["meta-llama/Llama-3.2-1B-Instruct", "support.jsonl", "refusals.jsonl"]
    assert deps[2]["annotations"] == {"rows": 300, "license": "cc-by-4.0"}
    assert doc["predicate"]["buildDefinition"]["internalParameters"] == {
        "license": "llama3.2", "base_license": "llama3.2", "license_inherited": True}


def test_provenance_refuses_bad_digests_and_empty_reasons(llama_merge, tmp_path):
    with pytest.raises(HearthError, match="base model has no valid sha256"):
        write_provenance(replace(llama_merge, base_digest="md5:abc"), tmp_path)
    with pytest.raises(HearthError, match="accept-risk needs a reason"):
        write_provenance(llama_merge, tmp_path, accepted_risk="  ")
    with pytest.raises(HearthError, match="no weights file"):
        write_provenance(replace(llama_merge, artifacts=[Artifact("README.md", H["5"], 1)]), tmp_path)
    assert not (tmp_path / "provenance.intoto.json").exists()
