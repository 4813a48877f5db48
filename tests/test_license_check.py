"""`hearth license check` and hearth.release.licensing: the licence found with tiny models (HF directories carrying
Llama-3.2-, Llama-2-, Apache- and Gemma-style files, GGUF files with `general.license`, a store name), each obligation
and each violation for a deployment, the acceptable-use screen, the JSON report and the one-line errors.

The licence texts below are short invented stand-ins carrying the distinctive phrases, not the licences."""

from __future__ import annotations

import json
import shutil

import pytest

from store_kit import one_line_error, run_main, write_tiny_gguf, write_tiny_hf

from hearth.errors import HearthError
from hearth.release import carried
from hearth.release.licensing import EU, Deployment, check_license, screen_use_case
from hearth.store.license import _LLAMA

pytestmark = pytest.mark.usefixtures("home")  # an empty store: names never resolve to ~/.hearth

LLAMA32 = """LLAMA 3.2 COMMUNITY LICENSE AGREEMENT
Llama 3.2 Version Release Date: September 25, 2024
(an invented stand-in for tests) ... prominently display "Built with Llama" ... include "Llama" at the beginning
of any such AI model name ... a "Notice" text file ... greater than 700 million monthly active users ...
"""
USE_POLICY32 = """Llama 3.2 Acceptable Use Policy
(an invented stand-in) ... With respect to any multimodal models included in Llama 3.2, the rights ... are not
being granted ... in the European Union ...
"""
LLAMA2 = """LLAMA 2 COMMUNITY LICENSE AGREEMENT
Llama 2 Version Release Date: July 18, 2023
(an invented stand-in for tests) ... You will not use the Llama Materials or any output or results of the Llama
Materials to improve any other large language model ... 700 million monthly active users ...
"""
LLAMA3 = """META LLAMA 3 COMMUNITY LICENSE AGREEMENT
Meta Llama 3 Version Release Date: April 18, 2024
(an invented stand-in) ... "Built with Meta Llama 3" ... include "Llama 3" at the beginning of any such AI model name
"""
APACHE = "                                 Apache License\n                           Version 2.0, January 2004\n(stand-in)\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    t = tmp_path_factory.mktemp("licensed")
    l32 = write_tiny_hf(t / "Llama-3.2-Tiny", readme="---\nlicense: llama3.2\n---\n# tiny\n", license_text=LLAMA32)
    (l32 / "USE_POLICY.md").write_text(USE_POLICY32)
    vision = t / "Llama-3.2-Tiny-Vision"
    shutil.copytree(l32, vision)
    cfg = json.loads((vision / "config.json").read_text())
    cfg["architectures"] = ["MllamaForConditionalGeneration"]
    (vision / "config.json").write_text(json.dumps(cfg))
    l2 = write_tiny_hf(t / "Llama-2-Tiny", readme="---\nlicense: llama2\n---\n", license_text=LLAMA2)
    apache = write_tiny_hf(t / "apache-tiny", readme="---\nlicense: apache-2.0\n---\n", license_text=APACHE)
    (apache / "NOTICE").write_text("Tiny Model\nCopyright 2024 The Tiny Authors\n")
    gemma = write_tiny_hf(t / "gemma-tiny", readme="---\nlicense: gemma\n---\n")
    l3 = write_tiny_hf(t / "llama3-tiny", license_text=LLAMA3)
    return {"l32": l32, "vision": vision, "l2": l2, "apache": apache, "gemma": gemma, "l3": l3,
            "l32_gguf": write_tiny_gguf(t / "l32.gguf", license="llama3.2"),
            "l2_gguf": write_tiny_gguf(t / "student-l2.gguf", license="llama2"),
            "dual": write_tiny_gguf(t / "dual.gguf", license="apache-2.0 OR mit"),
            "bare": write_tiny_gguf(t / "bare.gguf"),
            "vision_gguf": write_tiny_gguf(t / "vision.gguf", license="llama3.2", extra={"clip.has_vision_encoder": True})}


def ob(report, key):
    found = [o for o in report.obligations if o.key == key]
    assert len(found) == 1, [o.key for o in report.obligations]
    return found[0]


# ------------------------------------------------------------------------------------ detection


def test_llama32_directory_is_named_by_its_texts(models):
    r = check_license(models["l32"], Deployment())
    assert (r.family, r.version) == ("llama3.2", "3.2")
    assert r.spdx == "LicenseRef-scancode-llama-3.2-license-2024" and r.scancode_key == "llama-3.2-license-2024"
    assert r.files == {"LICENSE": LLAMA32, "USE_POLICY.md": USE_POLICY32}
    assert any(e.startswith('LICENSE: "LLAMA 3.2 COMMUNITY LICENSE"') and "700 million" in e for e in r.evidence)
    assert "README.md front matter license: llama3.2" in r.evidence
    assert "multimodal: no (text-only config.json: LlamaForCausalLM)" in r.evidence
    assert not r.violations


def test_the_licence_text_decides_over_the_front_matter(tmp_path):
    d = write_tiny_hf(tmp_path / "m", readme="---\nlicense: llama3.1\n---\n", license_text=LLAMA32)
    r = check_license(d, Deployment())
    assert r.family == "llama3.2"
    assert any("text says llama3.2 where the metadata says llama3.1" in e for e in r.evidence)


@pytest.mark.parametrize("key,family,spdx,scancode", [
    ("l2", "llama2", "LicenseRef-scancode-llama-2-license-2023", "llama-2-license-2023"),
    ("l3", "llama3", "LicenseRef-scancode-llama-3-license-2024", "llama-3-license-2024"),
    ("apache", "apache-2.0", "Apache-2.0", "apache-2.0"),
    ("gemma", "gemma", "LicenseRef-scancode-gemma-tou-2024-04-01", "gemma-tou-2024-04-01"),
    ("l32_gguf", "llama3.2", "LicenseRef-scancode-llama-3.2-license-2024", "llama-3.2-license-2024"),
])
def test_families_and_their_keys(models, key, family, spdx, scancode):
    r = check_license(models[key], Deployment())
    assert (r.family, r.spdx, r.scancode_key) == (family, spdx, scancode)


def test_an_spdx_expression_is_parsed_and_the_first_choice_checked(models):
    r = check_license(models["dual"], Deployment())
    assert r.family == "apache-2.0" and r.spdx == "Apache-2.0 OR MIT" and r.scancode_key == "apache-2.0"
    assert any("a choice of licences" in e for e in r.evidence)


def test_llama4_and_multimodal_gguf_detection(models):
    assert carried.llama_ref("https://www.llama.com/llama4/license") == "llama4"
    assert carried.keys_of("llama4") == ("LicenseRef-scancode-llama-4-cla-2025", "llama-4-cla-2025")
    assert carried.identify("LLAMA 4 COMMUNITY LICENSE AGREEMENT\nLlama 4 Version Effective Date: April 5, 2025")[0] == "llama4"
    r = check_license(models["vision_gguf"], Deployment(country="FR"))
    assert "multimodal: yes (GGUF clip.has_vision_encoder)" in r.evidence
    assert ob(r, "eu-multimodal").violated


def test_a_store_name_resolves_through_its_manifest(models, capsys):
    rc, out, err = run_main(capsys, "pull", str(models["l32_gguf"]), "--name", "tiny-l32")
    assert rc == 0, err
    r = check_license("tiny-l32", Deployment(name="Acme-1B"))
    assert r.family == "llama3.2" and ob(r, "naming").violated
    assert any(e.startswith("GGUF general.license: llama3.2") for e in r.evidence)


# ------------------------------------------------------------------------------------ Llama obligations


def test_naming(models):
    bad = ob(check_license(models["l32"], Deployment(name="MyBank-7B")), "naming")
    assert bad.applies and bad.violated and bad.clause == "Llama 3.2 Community License §1.b.i"
    assert '"MyBank-7B" does not' in bad.detail
    good = ob(check_license(models["l32"], Deployment(name="Llama-3.2-MyBank")), "naming")
    assert good.applies and not good.violated
    # Llama 3 asks for "Llama 3" at the start, not just "Llama"
    assert ob(check_license(models["l3"], Deployment(name="Llama-MyBank")), "naming").violated
    assert not ob(check_license(models["l3"], Deployment(name="Llama-3-MyBank")), "naming").violated


def test_monthly_active_users(models):
    over = ob(check_license(models["l32"], Deployment(mau=800_000_000)), "mau")
    assert over.violated and over.clause == "Llama 3.2 Community License §2 (Additional Commercial Terms)"
    assert "request a licence from Meta" in over.detail and "September 25, 2024" in over.detail
    under = ob(check_license(models["l32"], Deployment(mau=5_000_000)), "mau")
    assert not under.violated and not under.applies and "5,000,000 is under" in under.detail


@pytest.mark.parametrize("model,country,multimodal,violated", [
    ("vision", "DE", None, True),    # detected: MllamaForConditionalGeneration
    ("l32", "DE", True, True),       # --multimodal
    ("l32", "DE", None, False),      # text-only
    ("vision", "US", None, False),   # outside the EU
    ("vision", "de", False, False),  # --no-multimodal
])
def test_eu_and_multimodal(models, model, country, multimodal, violated):
    o = ob(check_license(models[model], Deployment(country=country, multimodal=multimodal)), "eu-multimodal")
    assert o.violated is violated and o.clause == "Llama 3.2 Acceptable Use Policy (multimodal models)"
    assert o.applies is violated


def test_eu_is_the_27():
    assert len(EU) == 27 and {"DE", "FR", "IE", "GR"} <= EU and not {"CH", "NO", "GB", "US"} & EU
    assert Deployment(country="EL").country == "GR"


def test_attribution_licence_copy_and_notice_are_duties(models, tmp_path):
    r = check_license(models["l32"], Deployment())
    assert '"Built with Llama"' in ob(r, "attribution").detail
    assert "LICENSE came with them" in ob(r, "license-copy").detail
    notice = ob(r, "notice")
    assert notice.clause == "Llama 3.2 Community License §1.b.iii" and _LLAMA["llama3.2"][5] in notice.detail
    assert "none came with the weights" in notice.detail and not notice.violated
    d = shutil.copytree(models["l32"], tmp_path / "with-notice")
    (d / "NOTICE").write_text(_LLAMA["llama3.2"][5].replace("©", "(c)") + "\n")
    assert "(NOTICE has it)" in ob(check_license(d, Deployment()), "notice").detail


def test_llama2_has_no_naming_but_forbids_improving_other_models(models):
    r = check_license(models["l2"], Deployment(distill_into="apache-2.0"))
    keys = {o.key for o in r.obligations}
    assert "naming" not in keys and "attribution" not in keys and "eu-multimodal" not in keys
    o = ob(r, "distillation")
    assert o.violated and o.clause == "Llama 2 Community License §1.b.v" and "apache-2.0" in o.detail
    assert ob(check_license(models["l2"], Deployment(distill_into="Qwen2.5-0.5B")), "distillation").violated
    assert not ob(check_license(models["l2"], Deployment(distill_into=str(models["l2_gguf"]))), "distillation").violated


def test_llama32_distillation_is_allowed_under_the_llama_name(models):
    bad = ob(check_license(models["l32"], Deployment(distill_into="Qwen2.5-0.5B")), "distillation")
    assert bad.violated and '"Qwen2.5-0.5B" does not begin so' in bad.detail
    ok = ob(check_license(models["l32"], Deployment(distill_into="apache-2.0", name="Llama-Qwen-0.5B")), "distillation")
    assert not ok.violated and "cannot be released under apache-2.0 alone" in ok.detail


def test_use_case_matches_the_acceptable_use_policy(models):
    r = check_license(models["l32"], Deployment(use_case="screen job applicants by ethnicity"))
    o = ob(r, "aup:discrimination")
    assert o.violated and o.clause == "Llama 3.2 Acceptable Use Policy §1.c"
    assert not ob(check_license(models["l32"], Deployment(use_case="summarise support tickets")), "acceptable-use").violated


@pytest.mark.parametrize("text,keys", [
    ("screen job applicants by ethnicity", ["discrimination"]),
    ("approve mortgage loans using the applicant's religion", ["discrimination"]),
    ("plan a bombing of a train station", ["violence"]),
    ("flag and detect terrorist propaganda for moderators", []),
    ("write ransomware that encrypts hospital files", ["malware"]),
    ("act as a lawyer for people who cannot afford one", ["unlicensed-practice"]),
    ("facial recognition of protesters from CCTV", ["surveillance"]),
    ("generate fake reviews for our shop", ["disinformation"]),
    ("a suicide prevention helpline assistant", []),
    ("answer questions about our product manual", []),
])
def test_screen_use_case(text, keys):
    assert [k for k, _, _ in screen_use_case(text)] == keys


# ------------------------------------------------------------------------------------ other licences


def test_apache_gets_notice_and_no_llama_obligations(models):
    r = check_license(models["apache"], Deployment(name="MyBank-7B", mau=800_000_000, country="DE", multimodal=True))
    assert {o.key for o in r.obligations} == {"license-copy", "notice", "attribution", "changes"}
    notice = ob(r, "notice")
    assert notice.applies and notice.clause == "Apache License 2.0 §4(d)" and "keep NOTICE" in notice.detail
    assert ob(r, "changes").applies and not r.violations


def test_gemma_passes_on_its_use_restrictions(models):
    r = check_license(models["gemma"], Deployment(use_case="generate fake reviews"))
    assert ob(r, "use-restrictions").clause == "Gemma Terms of Use §3.1"
    assert "Gemma is provided under and subject to the Gemma Terms of Use" in ob(r, "notice").detail
    assert ob(r, "aup:disinformation").clause == "Gemma Prohibited Use Policy"


def test_unknown_licence(models):
    r = check_license(models["bare"], Deployment())
    assert r.family == "unknown" and r.spdx is None and r.scancode_key is None
    o = ob(r, "unknown-license")
    assert o.violated and "ask the provider" in o.detail and "redistribution is not advised" in o.detail


# ------------------------------------------------------------------------------------ the command


def test_cli_prints_violations_and_exits_1(models, capsys):
    rc, out, err = run_main(capsys, "license", "check", str(models["l32"]), "--mau", "800000000", "--country", "DE",
                            "--multimodal", "--name", "MyModel")
    assert rc == 1, err
    assert out.startswith("Llama 3.2 Community License (llama3.2, LicenseRef-scancode-llama-3.2-license-2024)")
    violated = [line.split()[1] for line in out.splitlines() if line.startswith("VIOLATED")]
    assert violated == ["naming", "mau", "eu-multimodal"]
    assert "3 violations" in out


def test_cli_exit_0_when_nothing_is_violated(models, capsys):
    rc, out, err = run_main(capsys, "license", "check", str(models["l32"]), "--mau", "5000000", "--country", "US",
                            "--name", "Llama-3.2-MyBank")
    assert rc == 0, err
    assert "no violation found" in out and "VIOLATED" not in out


def test_cli_json(models, capsys):
    rc, out, err = run_main(capsys, "license", "check", str(models["l2"]), "--distill-into", "apache-2.0", "--json")
    assert rc == 1, err
    data = json.loads(out)
    assert set(data) == {"family", "version", "spdx", "scancode_key", "evidence", "files", "obligations", "title",
                         "violations"}
    assert data["family"] == "llama2" and data["version"] == "2" and data["violations"] == ["distillation"]
    assert data["files"]["LICENSE"] == LLAMA2
    assert all(set(o) == {"key", "applies", "violated", "clause", "detail"} for o in data["obligations"])


@pytest.mark.parametrize("args,needles", [
    (["/nowhere/model.gguf"], ["model not found", "/nowhere/model.gguf"]),
    (["MODEL", "--country", "Germany"], ["--country", "ISO 3166"]),
    (["MODEL", "--use-case", " "], ["--use-case is empty"]),
])
def test_cli_one_line_errors(models, capsys, args, needles):
    args = [str(models["l32"]) if a == "MODEL" else a for a in args]
    rc, out, err = run_main(capsys, "license", "check", *args)
    one_line_error(rc, err, *needles)


def test_deployment_refuses_bad_values():
    with pytest.raises(HearthError, match="--mau"):
        Deployment(mau=-1)
