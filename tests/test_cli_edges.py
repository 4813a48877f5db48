"""CLI and store edges found by auditing the commands as a user would: each one error line, nothing lost."""

from __future__ import annotations

import json
import shutil

import pytest

from hearth.cli.options import unescape
from hearth.errors import HearthError
from hearth.loader import resolve_model
from hearth.store.manifest import Manifest, check_name
from store_kit import manifest_json, one_line_error, run_main, write_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("edges") / "tiny.gguf", license="mit")


def test_prompt_that_is_not_utf8_is_one_line(capsys):
    # what Python makes of the bytes "Hello \xff world" on the command line (surrogateescape)
    rc, _, err = run_main(capsys, "generate", "smollm2", "Hello \udcff world", "--max-tokens", "1")
    one_line_error(rc, err, "not valid UTF-8", "character 6")


def test_run_refuses_an_empty_prompt(capsys):
    rc, _, err = run_main(capsys, "run", "smollm2", "   ")
    one_line_error(rc, err, "prompt is empty")


def test_stop_escapes_are_the_characters():
    assert unescape(r"\n\n") == "\n\n"
    assert unescape(r"a\tb\r\\n") == "a\tb\r\\n"  # an escaped backslash stays one backslash before "n"
    assert unescape(r"C:\path\x") == r"C:\path\x"  # other backslashes as typed


def test_names_with_a_trailing_newline_are_refused():
    with pytest.raises(Exception, match="invalid model name"):
        check_name("abc\n")
    assert check_name("abc") == "abc"


def test_manifest_fields_must_have_their_types(home, tiny, capsys):
    assert run_main(capsys, "pull", str(tiny), "--name", "t")[0] == 0
    d = manifest_json(home, "t")
    Manifest.from_dict(d)  # as written: valid
    for path, value, words in [(("summary", "parameters"), "lots", "summary.parameters must be an integer"),
                               (("summary", "tied_embeddings"), "no", "true or false"),
                               (("source",), 5, "manifest.source must be a string"),
                               (("license", "id"), 3, "license.id must be a string or null")]:
        bad = json.loads(json.dumps(d))
        bad[path[0]] = value if len(path) == 1 else {**bad[path[0]], path[1]: value}
        with pytest.raises(ValueError, match=words):
            Manifest.from_dict(bad)


def test_rm_with_a_typo_removes_nothing(home, tiny, capsys):
    assert run_main(capsys, "pull", str(tiny), "--name", "a")[0] == 0
    assert run_main(capsys, "cp", "a", "b")[0] == 0
    rc, _, err = run_main(capsys, "rm", "a", "nosuch", "b")
    one_line_error(rc, err, "nosuch")
    assert (home / "manifests" / "a.json").exists() and (home / "manifests" / "b.json").exists()


def test_pull_refuses_settings_that_do_not_match_the_tensors(home, tmp_path, capsys):
    bad = write_tiny_gguf(tmp_path / "bc.gguf", extra={"llama.block_count": 5})  # 2 layers stored
    rc, _, err = run_main(capsys, "pull", str(bad), "--name", "bc")
    one_line_error(rc, err, "bc.gguf", "missing tensor layers.2.", "5 layers")
    assert not (home / "manifests" / "bc.json").exists()


def test_pull_license_that_is_a_directory(home, tiny, tmp_path, capsys):
    rc, _, err = run_main(capsys, "pull", str(tiny), "--license", str(tmp_path))
    one_line_error(rc, err, "is a directory")


def test_quantize_onto_its_own_input_is_refused(tmp_path, capsys):
    model = tmp_path / "m.gguf"
    shutil.copy(resolve_model("smollm2"), model)
    before = model.stat().st_size
    rc, _, err = run_main(capsys, "quantize", str(model), "--to", "int8", "-o", str(model), "--ppl-chunks", "0",
                          "--decode-tokens", "0")
    one_line_error(rc, err, "is the model being quantized")
    assert model.stat().st_size == before


def test_export_into_the_store_is_refused(home, tiny, capsys):
    assert run_main(capsys, "pull", str(tiny), "--name", "t")[0] == 0
    blob = next((home / "blobs").iterdir())
    size = blob.stat().st_size
    rc, _, err = run_main(capsys, "export", "t", "-o", str(blob))
    one_line_error(rc, err, "inside the store")
    assert blob.stat().st_size == size
    assert run_main(capsys, "verify")[0] == 0


@pytest.mark.parametrize("lr", ["0", "-1", "nan"])
def test_learning_rate_must_be_positive(lr):
    from hearth.errors import HearthError
    from hearth.tune.train import TrainConfig

    with pytest.raises(HearthError, match="--lr must be a positive number"):
        TrainConfig(lr=float(lr))


def test_structured_output_options(tmp_path, capsys):
    schema = tmp_path / "answer.json"
    schema.write_text('{"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],'
                      ' "additionalProperties": false}')
    rc, out, err = run_main(capsys, "run", "smollm2", "Is the sky blue?", "--json-schema", str(schema),
                            "--temperature", "0", "--json")
    assert rc == 0, err
    reply = json.loads(out)
    assert json.loads(reply["text"]) in ({"answer": "yes"}, {"answer": "no"}) and reply["finish_reason"] == "stop"
    rc, out, err = run_main(capsys, "generate", "smollm2", "Is the sky blue? Answer:", "--grammar",
                            'root ::= " yes" | " no"', "--temperature", "1.5", "--seed", "3")
    assert rc == 0 and out.strip() in ("yes", "no"), (out, err)
    rc, _, err = run_main(capsys, "generate", "smollm2", "x", "--json-schema", '{"type": ')
    one_line_error(rc, err, "the JSON schema is not valid JSON")
    rc, _, err = run_main(capsys, "generate", "smollm2", "x", "--grammar", "root ::= undefined_rule")
    one_line_error(rc, err, "invalid grammar")
    rc, _, err = run_main(capsys, "generate", "smollm2", "x", "--grammar", "root ::= \"a\"", "--json-schema", "{}")
    one_line_error(rc, err, "not both")
    rc, _, err = run_main(capsys, "generate", "smollm2", "x", "--grammar", str(tmp_path / "missing.gbnf"))
    one_line_error(rc, err, "missing.gbnf does not exist")


def test_tune_beta_outside_dpo_is_refused(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    rc, _, err = run_main(capsys, "tune", "smollm2", "--data", str(data), "-o", str(tmp_path / "out"), "--beta", "0.5")
    one_line_error(rc, err, "--beta applies to --method dpo only")


def test_logit_bias_option(capsys):
    from hearth.cli.options import _logit_bias

    assert _logit_bias(["45=100", "15043-1", "7+2.5", " 9 = -inf "]) == ((45, 100.0), (15043, -1.0), (7, 2.5), (9, -100.0))
    rc, out, err = run_main(capsys, "generate", "smollm2", "The sky is", "--logit-bias", "45=100", "--max-tokens", "4",
                            "--temperature", "1.0", "--json")
    assert rc == 0 and json.loads(out)["token_ids"] == [45] * 4, err
    for bad in ("abc", "45", "45=x", "45=nan", "=3"):
        rc, _, err = run_main(capsys, "generate", "smollm2", "x", "--logit-bias", bad)
        one_line_error(rc, err, "expected TOKEN_ID=BIAS")
    rc, _, err = run_main(capsys, "generate", "smollm2", "x", "--logit-bias", "45=101")
    one_line_error(rc, err, "biases must be between -100 and 100")
    rc, _, err = run_main(capsys, "generate", "smollm2", "x", "--logit-bias", "99999=1")
    one_line_error(rc, err, "outside the vocabulary [0, 49152)")


def test_serve_adapter_option(tmp_path, capsys):
    from hearth.cli.serve import _served_adapters

    (tmp_path / "sql").mkdir()
    assert _served_adapters([f"a={tmp_path / 'sql'}", str(tmp_path / "sql") + "/"], "smollm2") == {
        "a": str(tmp_path / "sql"), "sql": str(tmp_path / "sql") + "/"}
    for args, want in [([f"smollm2={tmp_path / 'sql'}"], "the name 'smollm2' is already taken"),
                       ([f"a={tmp_path / 'sql'}", f"a={tmp_path / 'sql'}"], "the name 'a' is already taken"),
                       ([f"a={tmp_path / 'nowhere'}"], "is not a directory"),
                       (["=x"], "expected NAME=DIR")]:
        with pytest.raises(HearthError, match=want):
            _served_adapters(args, "smollm2")
    # refused before the model loads or the port is taken: one line
    rc, _, err = run_main(capsys, "serve", "smollm2", "--port", "0", "--adapter", f"x={tmp_path / 'nowhere'}")
    one_line_error(rc, err, "is not a directory")


def test_version(capsys):
    from importlib.metadata import version

    rc, out, err = run_main(capsys, "--version")
    assert rc == 0 and out.strip() == f"hearth {version('hearth')}", err


def test_a_misspelled_model_name_gets_a_suggestion(home, capsys, tiny):
    rc, _, err = run_main(capsys, "pull", str(tiny), "--name", "tinyllama")
    assert rc == 0, err
    for typo, meant in (("smolm2", "smollm2"), ("tinylama", "tinyllama")):
        rc, _, err = run_main(capsys, "generate", typo, "hi", "--max-tokens", "1")
        one_line_error(rc, err, f"model not found: {typo}", f"did you mean {meant}")
    rc, _, err = run_main(capsys, "generate", "zzzz", "hi", "--max-tokens", "1")
    assert "did you mean" not in one_line_error(rc, err, "model not found")


def test_a_prompt_given_as_the_model_says_the_model_comes_first(capsys):
    rc, _, err = run_main(capsys, "run", "Why is the sky blue?")
    one_line_error(rc, err, "looks like a prompt", 'hearth run MODEL "Why is the sky blue?"')
