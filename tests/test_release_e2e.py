"""`hearth release` end to end (issue 18): tune a tiny model, release the adapter with a key, verify it with hearth
and with the model_signing CLI itself, tamper one byte and see verification fail naming the file; an impossible gate
refuses and leaves nothing behind; the card parses with huggingface_hub; the BOM and mof.yml validate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tune_kit
from store_kit import flip_byte

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parent.parent


def _run(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEARTH_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hearth.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny Apache-2.0 model tuned for 2 steps (a real `hearth tune` run: its summary.json carries the lineage),
    an eval record and a red-team report, and a key pair."""
    root = tmp_path_factory.mktemp("release")
    mdir = tune_kit.model_dir(str(root))
    (mdir / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\nhttp://www.apache.org/licenses/\n"
                                  "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION\n")
    readme = mdir / "README.md"
    readme.write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    data = tune_kit.write_jsonl(root / "chat.jsonl", tune_kit.chat_records(12))
    out = root / "adapter"
    r = _run(root / "home", "tune", str(mdir), "--data", str(data), "-o", str(out), "--max-steps", "2",
             "--batch-size", "4", "--quiet")
    assert r.returncode == 0, r.stderr
    (root / "eval.json").write_text(json.dumps({"model": str(mdir), "weights": "F32", "limit": 10, "results": [
        {"task": "arc_easy", "acc": 0.3, "items": 10}]}))
    rate = lambda x: {"n": 50, "k": int(50 * x), "rate": x, "ci95": [0.0, 1.0]}  # noqa: E731
    (root / "report.json").write_text(json.dumps({"guard": "default", "suites": {"harmbench": {}}, "configurations": {
        "no_guard": {"attack_success_rate_unseen": rate(0.2), "attack_success_rate": rate(0.2),
                     "over_refusal_rate": rate(0.1), "per_category": {"S9": rate(0.1)}},
        "guard": {"attack_success_rate_unseen": rate(0.0), "over_refusal_rate": rate(0.4), "per_category": {}}}}))
    r = _run(root / "home", "release", "keygen", "-o", str(root / "release.key"))
    assert r.returncode == 0, r.stderr
    return root, mdir, out


def test_release_verify_tamper(tuned):
    root, mdir, adapter = tuned
    rel = root / "rel"
    r = _run(root / "home", "release", str(mdir), "--adapter", str(adapter), "--evals", str(root / "eval.json"),
             "--redteam", str(root / "report.json"), "--gate", str(ROOT / "examples/release/gate.toml"),
             "--guard-policy", str(ROOT / "examples/guard/clinic.toml"), "--sign-key", str(root / "release.key"),
             "--accept-risk", "arc_easy below 0.35 on a 2-step tiny test model", "-o", str(rel))
    assert r.returncode == 0, r.stderr
    files = {p.relative_to(rel).as_posix() for p in rel.rglob("*") if p.is_file()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "LICENSE", "mof.yml", "bom.cdx.json",
            "provenance.intoto.json", "release.json", "model.sig", "guard-policy.toml",
            "eu/training_content_summary.md", "eu/copyright_policy.md", "eu/compute_ledger.json"} <= files
    # the gate failed arc_easy (0.3 < 0.35): the release went out only because the risk was accepted, on record
    assert "stop: eval arc_easy = 0.300 (limit >= 0.350): FAILED" in r.stderr
    from huggingface_hub import ModelCard

    card = ModelCard((rel / "README.md").read_text())
    assert card.data.base_model_relation == "adapter" and card.data.license == "apache-2.0"
    assert "Risk accepted" in card.text and "arc_easy below 0.35" in card.text and "chat.jsonl" in card.text
    import yaml

    from hearth.release.openness import validate_mof

    validate_mof(yaml.safe_load((rel / "mof.yml").read_text()))  # against the Model Openness Tool's schema
    prov = json.loads((rel / "provenance.intoto.json").read_text())
    assert "arc_easy below 0.35" in json.dumps(prov)
    # the BOM validates with CycloneDX's own validator
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str((rel / "bom.cdx.json").read_text()) is None
    # verify: hearth, then model_signing's own CLI
    pub = root / "release.pub"
    r = _run(root / "home", "release", "verify", str(rel), "--key", str(pub))
    assert r.returncode == 0 and "verified" in r.stdout, r.stderr
    cli = shutil.which("model_signing", path=str(Path(sys.executable).parent))
    assert cli, "the model_signing console script is installed with model-signing"
    v = subprocess.run([cli, "verify", "key", str(rel), "--signature", str(rel / "model.sig"), "--public_key", str(pub)],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stderr
    flip_byte(rel / "adapter_model.safetensors", 100)
    r = _run(root / "home", "release", "verify", str(rel), "--key", str(pub))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "changed: adapter_model.safetensors" in lines[0], r.stderr


def test_an_impossible_gate_refuses_and_leaves_nothing(tuned, tmp_path):
    root, mdir, adapter = tuned
    gate = tmp_path / "gate.toml"
    gate.write_text("[stop]\nmin_eval = { arc_easy = 0.99 }\nmax_attack_success_rate = 0.0\n")
    rel = tmp_path / "rel"
    r = _run(root / "home", "release", str(mdir), "--adapter", str(adapter), "--evals", str(root / "eval.json"),
             "--redteam", str(root / "report.json"), "--gate", str(gate), "-o", str(rel))
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["stop: eval arc_easy = 0.300 (limit >= 0.990): FAILED",
                     "stop: attack_success_rate = 0.200 (limit <= 0.000): FAILED",
                     lines[-1]] and lines[-1].startswith("error: release refused by the gate"), r.stderr
    assert not rel.exists() and not list(tmp_path.glob(".rel.*"))  # nothing half-written


def test_a_gguf_names_only_its_licence_and_license_file_supplies_the_text(tmp_path):
    """A GGUF carries `general.license = apache-2.0`, not the text: a gate that requires LICENSE refuses until
    --license-file gives it (hearth holds no licence texts); the file is released as the model's own name."""
    from store_kit import write_tiny_gguf

    model = write_tiny_gguf(tmp_path / "sha256-0123", license="apache-2.0")  # named like a store blob
    gate = tmp_path / "gate.toml"
    gate.write_text('[stop]\nrequire_documents = ["LICENSE"]\n')
    text = tmp_path / "Apache-2.0.txt"
    text.write_text("Apache License\nVersion 2.0, January 2004\n")
    args = ["release", str(model), "--gate", str(gate), "--name", "tiny-release"]
    r = _run(tmp_path / "home", *args, "-o", str(tmp_path / "a"))
    assert r.returncode != 0 and "stop: document LICENSE = missing (limit required): FAILED" in r.stderr, r.stderr
    r = _run(tmp_path / "home", *args, "--license-file", str(text), "-o", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b" / "LICENSE").read_text() == text.read_text()
    assert (tmp_path / "b" / "tiny-release.gguf").read_bytes()[:4] == b"GGUF"
    assert json.loads((tmp_path / "b" / "release.json").read_text())["gate"]["verdict"] == "passed"
