"""License detection (GGUF metadata, HF LICENSE files and README front matter, texts) and the plain
summaries `hearth show` prints, Llama community licenses in particular."""

from __future__ import annotations

import pytest

from hearth.store import license as lic
from hearth.store.manifest import LicenseInfo


@pytest.mark.parametrize("value,expected", [
    ("llama3.2", "llama3.2"), ("Llama-3.2", "llama3.2"), ("llama3_2", "llama3.2"), ("llama 3.1", "llama3.1"),
    ("llama3", "llama3"), ("LLAMA2", "llama2"), ("llama2-70b", "llama2"), ("llama3.3", "llama3.3"),
    ("Apache-2.0", "apache-2.0"), ("apache 2.0", "apache-2.0"), ("MIT", "mit"), ("other", "other"),
    (["cc-by-4.0"], "cc-by-4.0"), ("", None), (None, None),
])
def test_normalize_id(value, expected):
    assert lic.normalize_id(value) == expected


@pytest.mark.parametrize("text,expected", [
    ("LLAMA 2 COMMUNITY LICENSE AGREEMENT\nLlama 2 Version Release Date: July 18, 2023", "llama2"),
    ("META LLAMA 3 COMMUNITY LICENSE AGREEMENT\nMeta Llama 3 Version Release Date: April 18, 2024", "llama3"),
    ("LLAMA 3.1 COMMUNITY LICENSE AGREEMENT", "llama3.1"),
    ("LLAMA 3.2 COMMUNITY\nLICENSE AGREEMENT", "llama3.2"),
    ("                                 Apache License\n                           Version 2.0, January 2004", "apache-2.0"),
    ("MIT License\n\nCopyright (c) 2024", "mit"),
    ("Creative Commons Attribution-NonCommercial 4.0 International", "cc-by-nc-4.0"),
    ("Some bespoke terms.", None),
])
def test_identify_text(text, expected):
    assert lic.identify_text(text) == expected


@pytest.mark.parametrize("meta,expected_id", [
    ({"general.license": "llama3.2"}, "llama3.2"),
    ({"general.license": "other", "general.license.name": "llama3"}, "llama3"),
    ({"general.license": "other", "general.license.link": "https://www.llama.com/llama3_1/license/"}, "llama3.1"),
    ({"general.license": "apache-2.0"}, "apache-2.0"),
    ({"general.license": "my-own"}, "my-own"),
    ({}, None),
])
def test_from_gguf_metadata(meta, expected_id):
    info = lic.from_gguf_metadata(meta)
    assert (info.id if info else None) == expected_id


def test_front_matter():
    readme = "---\nlicense: llama3.2\nlicense_name: 'llama3.2'\nlanguage:\n- en\n- de\nextra: x # note\n---\n# Title\nlicense: not-this\n"
    fm = lic.front_matter(readme)
    assert fm["license"] == "llama3.2" and fm["license_name"] == "llama3.2" and fm["language"] == ["en", "de"]
    assert fm["extra"] == "x"
    assert lic.front_matter("# no front matter\nlicense: mit\n") == {}


def test_from_hf_dir(tmp_path):
    assert lic.from_hf_dir(tmp_path) is None
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: llama3.1\nlicense_link: LICENSE\n---\n")
    info = lic.from_hf_dir(tmp_path)
    assert info.id == "llama3.1" and info.source == "README.md front matter" and info.link == "LICENSE"
    (tmp_path / "README.md").write_text("# card without front matter\n")
    (tmp_path / "LICENSE.txt").write_text("Apache License\nVersion 2.0, January 2004\n")
    (tmp_path / "USE_POLICY.md").write_text("policy")
    info = lic.from_hf_dir(tmp_path)
    assert info.id == "apache-2.0" and info.source == "LICENSE.txt"
    assert [p.name for p in lic.hf_license_files(tmp_path)] == ["LICENSE.txt", "USE_POLICY.md"]


@pytest.mark.parametrize("lid,built_with,prefix", [
    ("llama3", "Built with Meta Llama 3", '"Llama 3"'),
    ("llama3.1", "Built with Llama", '"Llama"'),
    ("llama3.2", "Built with Llama", '"Llama"'),
    ("llama3.3", "Built with Llama", '"Llama"'),
])
def test_llama3_summaries_state_every_condition(lid, built_with, prefix):
    lines = lic.summarize(LicenseInfo(id=lid, name=lic.title(lid), source="test"))
    text = "\n".join(lines)
    assert lines[0] == lic.title(lid)
    assert "700 million monthly active users" in text and "ask Meta" in text
    assert "Acceptable Use Policy" in text and "use-policy" in text
    assert f'"{built_with}"' in text
    assert f"name must begin with {prefix}" in text
    assert ("European Union" in text) == (lid == "llama3.2")


def test_llama2_summary_is_accurate():
    text = "\n".join(lic.summarize(LicenseInfo(id="llama2", name=lic.title("llama2"), source="test")))
    assert "700 million monthly active users" in text and "Acceptable Use Policy" in text
    assert "Llama 2 is licensed under the LLAMA 2 Community License" in text
    assert "improve any other large language model" in text
    assert 'no naming rule' in text and 'no "Built with Llama" display' in text


def test_other_and_missing_licenses():
    assert "Permissive" in lic.summarize(LicenseInfo(id="apache-2.0", name="Apache License 2.0", source="x"))[1]
    assert "Non-commercial" in lic.summarize(LicenseInfo(id="cc-by-nc-4.0", name=None, source="x"))[1]
    unknown = lic.summarize(LicenseInfo(id="acme-1", name="ACME terms", source="x"))
    assert unknown[0] == "ACME terms (acme-1)" and "no summary" in unknown[1]
    none = lic.summarize(None)
    assert none[0] == "none found" and "--license FILE" in none[1]
