"""Nothing is overwritten without --force (issue 24, item 10): `quantize` onto a store name or an -o file, `pull` of a
name with other content, `export` onto a bundle file, `export-weights` / `export-adapter` onto a path. Each refusal is
one `error:` line naming --force and leaves what was there untouched; each --force replaces it, atomically (nothing
but the result is left beside it)."""

from __future__ import annotations

from pathlib import Path

import pytest

import tiny
from hearth.loader import load
from hearth.store import Store
from hearth.store.common import replacing
from hearth.tune.lora import LoraConfig
from hearth.weights import open_checkpoint
from hearth.weights.gguf_writer import write_gguf

from lora_kit import make_adapter
from store_kit import one_line_error, run_main, write_tiny_gguf

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny SmolLM-shaped F32 GGUF whose matrices quantize (rows a multiple of 32)."""
    root = tmp_path_factory.mktemp("force")
    directory = tiny.save_hf_model(tiny.make_hf_model("smollm_tied"), root / "tiny-smollm")
    lm = load(str(directory), dtype="float32")
    return write_gguf(root / "tiny-smollm.gguf", lm.model.config, tiny.state_dict_of(lm.model), lm.tokenizer,
                      lm.chat_template.source)


def _only(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------------------------ quantize


def test_quantize_refuses_an_existing_store_name_until_force(tiny_model, home, capsys):
    args = ("quantize", str(tiny_model), "--to", "int8", "--ppl-chunks", "0", "--decode-tokens", "0")
    rc, out, err = run_main(capsys, *args)
    assert rc == 0, err
    before = Store().get("tiny-smollm-int8")
    rc, out, err = run_main(capsys, "quantize", str(tiny_model), "--to", "int8", "--name", "tiny-smollm-int8",
                            "--ppl-chunks", "0", "--decode-tokens", "0")
    one_line_error(rc, err, "'tiny-smollm-int8' is already in the store", "--force", "--name")
    assert Store().get("tiny-smollm-int8") == before
    rc, out, err = run_main(capsys, "quantize", str(tiny_model), "--to", "int4", "--name", "tiny-smollm-int8", "--force",
                            "--ppl-chunks", "0", "--decode-tokens", "0")
    assert rc == 0, err
    assert Store().get("tiny-smollm-int8").summary.quantization == "Q4_1"


def test_quantize_output_file_refused_then_replaced_with_force(tiny_model, home, tmp_path, capsys):
    out_file = tmp_path / "q.gguf"
    out_file.write_bytes(b"precious")
    base = ("quantize", str(tiny_model), "--to", "int8", "-o", str(out_file), "--ppl-chunks", "0", "--decode-tokens", "0")
    rc, _, err = run_main(capsys, *base)
    one_line_error(rc, err, str(out_file), "already exists", "--force")
    assert out_file.read_bytes() == b"precious"
    rc, _, err = run_main(capsys, *base, "--force")
    assert rc == 0, err
    assert open_checkpoint(out_file).quantization == "Q8_0"
    assert _only(tmp_path) == ["q.gguf"]  # the temporary file was renamed into place, nothing left beside it


# ------------------------------------------------------------------------------------------------ pull, export


def test_pull_of_other_content_refused_same_content_up_to_date(home, tmp_path, capsys):
    a = write_tiny_gguf(tmp_path / "a.gguf")
    b = write_tiny_gguf(tmp_path / "b.gguf", seed_shift=0.5)
    rc, _, err = run_main(capsys, "pull", str(a), "--name", "m")
    assert rc == 0, err
    first = Store().get("m")
    rc, out, err = run_main(capsys, "pull", str(a), "--name", "m")
    assert rc == 0 and "m is already up to date" in out, (out, err)
    assert Store().get("m") == first  # not even rewritten
    rc, _, err = run_main(capsys, "pull", str(b), "--name", "m")
    one_line_error(rc, err, "'m' is already in the store with other weights", "hearth pull SOURCE --force", "--name NEW")
    assert Store().get("m") == first
    rc, out, err = run_main(capsys, "pull", str(b), "--name", "m", "--if-missing")  # its meaning is kept
    assert rc == 0 and "already in the store" in out and Store().get("m") == first
    rc, out, err = run_main(capsys, "pull", str(b), "--name", "m", "--force")
    assert rc == 0 and "replaced the old one" in out, (out, err)
    assert Store().get("m").weights.digest != first.weights.digest


def test_export_bundle_refuses_an_existing_file_until_force(home, tmp_path, capsys):
    a = write_tiny_gguf(tmp_path / "a.gguf")
    assert run_main(capsys, "pull", str(a), "--name", "m")[0] == 0
    out_dir = tmp_path / "usb"
    out_dir.mkdir()
    bundle = out_dir / "m.hearth"
    bundle.write_bytes(b"precious")
    rc, _, err = run_main(capsys, "export", "m", "-o", str(bundle))
    one_line_error(rc, err, "already exists", "--force")
    assert bundle.read_bytes() == b"precious"
    rc, out, err = run_main(capsys, "export", "m", "-o", str(bundle), "--force")
    assert rc == 0, err
    assert bundle.stat().st_size > 1000 and _only(out_dir) == ["m.hearth"]


# ------------------------------------------------------------------------------------------------ export-weights / export-adapter


def test_export_weights_refuses_paths_until_force(tiny_model, home, tmp_path, capsys):
    gguf_out = tmp_path / "out.gguf"
    gguf_out.write_bytes(b"precious")
    rc, _, err = run_main(capsys, "export-weights", str(tiny_model), "--format", "gguf", "-o", str(gguf_out))
    one_line_error(rc, err, "already exists", "--force")
    assert gguf_out.read_bytes() == b"precious"
    rc, out, err = run_main(capsys, "export-weights", str(tiny_model), "--format", "gguf", "-o", str(gguf_out), "--force")
    assert rc == 0 and "F32" in out, (out, err)
    assert open_checkpoint(gguf_out).quantization == "F32"  # the base's own type

    hf_out = tmp_path / "hf"
    rc, _, err = run_main(capsys, "export-weights", str(tiny_model), "-o", str(hf_out))
    assert rc == 0, err
    (hf_out / "marker").write_text("old")
    rc, _, err = run_main(capsys, "export-weights", str(tiny_model), "-o", str(hf_out))
    one_line_error(rc, err, "already exists", "--force")
    assert (hf_out / "marker").read_text() == "old"
    rc, _, err = run_main(capsys, "export-weights", str(tiny_model), "-o", str(hf_out), "--force")
    assert rc == 0, err
    assert not (hf_out / "marker").exists() and (hf_out / "config.json").is_file()
    assert _only(tmp_path) == ["hf", "out.gguf"]

    notes = tmp_path / "notes"  # a directory that holds no model is never replaced, --force or not
    notes.mkdir()
    (notes / "todo.txt").write_text("keep")
    rc, _, err = run_main(capsys, "export-weights", str(tiny_model), "-o", str(notes), "--force")
    one_line_error(rc, err, "holds no model")
    assert (notes / "todo.txt").read_text() == "keep"


def test_export_weights_quant_choices(tiny_model, home, tmp_path, capsys):
    out = tmp_path / "q.gguf"
    rc, text, err = run_main(capsys, "export-weights", str(tiny_model), "--format", "gguf", "-o", str(out), "--quant", "q8_0")
    assert rc == 0, err
    assert open_checkpoint(out).quantization == "Q8_0" and "Q8_0" in text
    rc, _, err = run_main(capsys, "export-weights", str(tiny_model), "-o", str(tmp_path / "hf"), "--quant", "q4_1")
    one_line_error(rc, err, "--quant q4_1 applies to --format gguf")
    rc, _, err = run_main(capsys, "export-weights", str(tiny_model), "--format", "gguf", "-o", str(tmp_path / "x.gguf"),
                          "--quant", "q3_k")
    one_line_error(rc, err, "unknown --quant")


def test_export_adapter_refuses_an_existing_file_until_force(tiny_model, home, tmp_path, capsys):
    adapter = make_adapter(tmp_path / "adapter", LoraConfig(r=4, alpha=8), seed=0, std=0.1, model=str(tiny_model))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "a.gguf"
    out.write_bytes(b"precious")
    rc, _, err = run_main(capsys, "export-adapter", str(tiny_model), str(adapter), "-o", str(out))
    one_line_error(rc, err, "already exists", "--force")
    assert out.read_bytes() == b"precious"
    rc, text, err = run_main(capsys, "export-adapter", str(tiny_model), str(adapter), "-o", str(out), "--force")
    assert rc == 0, err
    assert out.stat().st_size > 1000 and _only(out_dir) == ["a.gguf"]


def test_replacing_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target, ".gguf") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and _only(tmp_path) == ["model.gguf"]
