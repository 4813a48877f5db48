"""`hearth tune`, `distill`, `export-weights` and `--adapter` as real subprocesses on a tiny model: the happy
path end to end, and bad inputs as one `error:` line with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tune_kit

TIMEOUT = 240


def _run(*args: str, home=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if home is not None:
        env["HEARTH_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "hearth.cli", *args], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("hearth: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_cli")
    mdir = tune_kit.model_dir(str(root))
    data = tune_kit.write_jsonl(root / "chat.jsonl", tune_kit.chat_records(24))
    bad = tune_kit.write_jsonl(root / "bad.jsonl", tune_kit.chat_records(5), {4: "{not json"})
    return root, mdir, data, bad


@pytest.fixture(scope="module")
def trained(env):
    """tune with --merge into a fresh store; returns the output directory."""
    root, mdir, data, _ = env
    out = root / "adapter"
    r = _run("tune", str(mdir), "--data", str(data), "-o", str(out), "--max-steps", "4", "--batch-size", "4", "--lr", "0.01",
             "--save-every", "2", "--merge", "tiny-tuned", "--quiet", home=root / "store")
    assert r.returncode == 0, r.stderr
    assert "adapter in" in r.stdout and "merged into the store as tiny-tuned" in r.stdout
    return out


def test_tune_then_run_with_adapter_merged_model_and_exports_agree(env, trained):
    root, mdir, _, _ = env
    assert json.loads((trained / "adapter_config.json").read_text())["peft_type"] == "LORA"
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 4
    # the lineage a release reads weeks later (issue 18): the base's digest and licence, the data's digest and rows
    from hearth.tune.lineage import model_digest, sha256_file

    lin = summary["lineage"]
    assert lin["base"]["digest"] == model_digest(mdir) and lin["base"]["ref"] == str(mdir)
    data = Path(lin["data"][0]["path"])
    assert lin["data"][0]["sha256"] == sha256_file(data) and lin["data"][0]["rows"] == 24
    assert lin["settings"]["max_steps"] == 4 and lin["tokens"] == summary["tokens"] and lin["energy_kwh"] is None
    gen = ["--temperature", "0", "--max-tokens", "8", "--json"]
    with ThreadPoolExecutor(4) as pool:
        jobs = {
            "adapter": pool.submit(_run, "generate", str(mdir), "The", *gen, "--adapter", str(trained), home=root / "store"),
            "merged": pool.submit(_run, "generate", "tiny-tuned", "The", *gen, home=root / "store"),
            "gguf": pool.submit(_run, "export-weights", str(mdir), "--adapter", str(trained), "--format", "gguf", "-o", str(root / "t.gguf")),
            "hf": pool.submit(_run, "export-weights", "tiny-tuned", "-o", str(root / "hfout"), home=root / "store"),
        }
        res = {k: j.result() for k, j in jobs.items()}
    for k, r in res.items():
        assert r.returncode == 0, (k, r.stderr)
    ids = json.loads(res["adapter"].stdout)["token_ids"]
    assert len(ids) == 8 and json.loads(res["merged"].stdout)["token_ids"] == ids
    back = _run("generate", str(root / "t.gguf"), "The", *gen, "--dtype", "float32")
    assert back.returncode == 0 and json.loads(back.stdout)["token_ids"] == ids
    assert (root / "hfout" / "config.json").is_file()
    # the lineage travels with the exports: llama.cpp's general.base_model keys and the tune run's record
    from hearth.weights import open_checkpoint

    meta = open_checkpoint(root / "t.gguf").metadata
    assert meta["general.base_model.count"] == 1 and meta["general.base_model.0.name"] == str(mdir)
    record = json.loads(meta["hearth.lineage"])
    assert record["adapter"]["data"][0]["sha256"] == lin["data"][0]["sha256"]
    assert record["base"]["digest"] == lin["base"]["digest"]
    assert json.loads((root / "hfout" / "lineage.json").read_text())["base"]["ref"] == "tiny-tuned"


def test_lineage_travels_through_merge_quantize_store_bundle_and_release(env, trained):
    """Issue 18 item 4: the record each step writes reaches a release made later, through the store (a `lineage`
    layer), a second step (quantize keeps the first as its parent), a bundle and an adapter GGUF."""
    root, mdir, _, _ = env
    home = root / "store"
    tuned = json.loads((trained / "summary.json").read_text())["lineage"]
    from hearth.tune.lineage import model_digest
    from hearth.weights import open_checkpoint

    shown = json.loads(_run("show", "tiny-tuned", "--json", home=home).stdout)
    merged = shown["lineage"]
    assert merged["step"] == "merge" and merged["base"]["digest"] == model_digest(mdir)
    assert merged["adapter"]["data"] == tuned["data"] and merged["adapter"]["step"] == "tune"
    assert any(layer["kind"] == "lineage" for layer in shown["layers_detail"])
    r = _run("quantize", "tiny-tuned", "--to", "int8", home=home)
    assert r.returncode == 0, r.stderr
    shown = json.loads(_run("show", "tiny-tuned-int8", "--json", home=home).stdout)
    q = shown["lineage"]
    assert q["step"] == "quantize" and q["settings"]["qtype"] == "Q8_0" and q["base"]["ref"] == "tiny-tuned"
    assert q["parent"]["step"] == "merge" and q["parent"]["adapter"]["data"] == tuned["data"]
    assert shown["made"] == f"quantize Q8_0 ← merge ← tune lora on chat.jsonl (24 rows) ← {mdir}"
    text = _run("show", "tiny-tuned-int8", home=home).stdout
    assert "made" in text and "quantize Q8_0" in text
    # a bundle carries the layer to another machine's store
    bundle = root / "q.hearth"
    assert _run("export", "tiny-tuned-int8", "-o", str(bundle), home=home).returncode == 0
    assert _run("import", str(bundle), home=root / "other").returncode == 0
    assert json.loads(_run("show", "tiny-tuned-int8", "--json", home=root / "other").stdout)["lineage"] == q
    # an adapter GGUF names its base and carries its tune run
    r = _run("export-adapter", str(mdir), str(trained), "-o", str(root / "a.gguf"))
    assert r.returncode == 0, r.stderr
    meta = _gguf_meta(root / "a.gguf")
    assert meta["general.base_model.0.name"] == str(mdir)
    rec = json.loads(meta["hearth.lineage"])
    assert rec["step"] == "export-adapter" and rec["adapter"]["data"] == tuned["data"]
    # a release of the stored, quantized model weeks later knows the whole chain
    r = _run("release", "tiny-tuned-int8", "-o", str(root / "rel"), "--accept-risk", "a test model: no licence", home=home)
    assert r.returncode == 0, r.stderr
    card = (root / "rel" / "README.md").read_text()
    assert f"- Base model: `{mdir}` ({model_digest(mdir)})" in card and "- Relation to the base: merge" in card
    assert f"sha256 {tuned['data'][0]['sha256']}" in card and "quantize Q8_0 ← merge ← tune" in card
    assert json.loads((root / "rel" / "release.json").read_text())["lineage"] == q
    released = open_checkpoint(root / "rel" / "tiny-tuned-int8.gguf").metadata
    assert json.loads(released["hearth.lineage"]) == q


def _gguf_meta(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith(("general.", "hearth.")):
            out[key] = field.contents()
    return out


def test_resume_continues_and_refuses_to_overwrite(env, trained):
    root, mdir, data, _ = env
    again = _run("tune", str(mdir), "--data", str(data), "-o", str(trained), "--max-steps", "4", "--quiet")
    assert "already holds a checkpoint; continue it with --resume" in _one_error_line(again)
    r = _run("tune", str(mdir), "--data", str(data), "-o", str(trained), "--max-steps", "4", "--batch-size", "4", "--lr", "0.01",
             "--save-every", "2", "--resume", "--quiet")
    assert r.returncode == 0 and "4 steps" in r.stdout, r.stderr


@pytest.mark.parametrize("case", ["bad_line", "method", "target", "empty", "incompatible", "memory", "format", "missing"])
def test_bad_inputs_are_one_line_errors(env, trained, case, tmp_path):
    root, mdir, data, bad = env
    base = ["tune", str(mdir), "-o", str(tmp_path / "o"), "--quiet"]
    if case == "bad_line":
        args, want = base + ["--data", str(bad)], r"bad.jsonl:4: not valid JSON"
    elif case == "method":
        args, want = base + ["--data", str(data), "--method", "rlhf"], "--method must be one of lora, qlora, full, dpo"
    elif case == "target":
        args, want = base + ["--data", str(data), "--target-modules", "q_proj,wq"], "unknown LoRA target module(s) ['wq']"
    elif case == "empty":
        (tmp_path / "e.jsonl").write_text("")
        args, want = base + ["--data", str(tmp_path / "e.jsonl")], "empty dataset"
    elif case == "incompatible":
        other = tune_kit.model_dir(str(tmp_path), "llama2_mha")
        args, want = ["generate", str(other), "hi", "--adapter", str(trained)], "does not fit this model"
    elif case == "memory":
        args, want = base + ["--data", str(data), "--memory-limit", "0.0001"], "training would need about"
    elif case == "format":
        args, want = ["export-weights", str(mdir), "--format", "onnx", "-o", str(tmp_path / "x")], "--format must be safetensors or gguf"
    else:
        args, want = ["run", str(mdir), "hi", "--adapter", str(tmp_path / "nowhere")], "is not a directory"
    assert want in _one_error_line(_run(*args))


def test_ctrl_c_finishes_the_step_saves_and_resume_continues(env, tmp_path):
    """Ctrl-C keeps the progress: the step under way finishes, a checkpoint is written (here long before the next
    --save-every), the exit is 130 with one line saying how to continue, and --resume does, with no other option
    (they are saved in the checkpoint), to the loss sequence of a run never interrupted. A higher --max-steps
    extends the finished run; an option given again with another value is refused, naming both values."""
    import signal
    import time

    root, mdir, data, _ = env
    out = tmp_path / "o"
    opts = ["--data", str(data), "--max-steps", "30", "--batch-size", "1", "--lr", "0.003", "--save-every", "1000", "--quiet"]
    p = subprocess.Popen([sys.executable, "-m", "hearth.cli", "tune", str(mdir), "-o", str(out), *opts], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))
    log = out / "log.jsonl"
    deadline = time.monotonic() + TIMEOUT
    while not (log.exists() and len(log.read_text().splitlines()) >= 2) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=TIMEOUT)
    r = subprocess.CompletedProcess([], p.returncode, "", err)
    assert p.returncode == 130, err
    line = _one_error_line(r)
    assert "stopped at step" in line and "--resume" in line
    step = int(line.split("stopped at step ")[1].split("/")[0])
    assert 2 <= step < 30 and len(log.read_text().splitlines()) == step
    assert (out / "checkpoint" / "state.pt").is_file()
    whole = _run("tune", str(mdir), "-o", str(tmp_path / "whole"), *opts)  # the same run, uninterrupted
    assert whole.returncode == 0, whole.stderr
    again = _run("tune", str(mdir), "-o", str(out), "--resume", "--quiet")
    assert again.returncode == 0 and "30 steps" in again.stdout, again.stderr

    def losses(d):
        return [json.loads(x)["loss"] for x in (d / "log.jsonl").read_text().splitlines()]
    assert losses(out) == losses(tmp_path / "whole") and len(losses(out)) == 30
    r = _run("tune", str(mdir), "-o", str(out), "--resume", "--lr", "0.01", "--quiet")
    assert "--lr 0.01 differs from this run's saved --lr 0.003" in _one_error_line(r)
    more = _run("tune", str(mdir), "-o", str(out), "--resume", "--max-steps", "34", "--quiet")
    assert more.returncode == 0 and "34 steps" in more.stdout, more.stderr
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert losses(out)[:30] == losses(tmp_path / "whole") and [r["step"] for r in log] == list(range(1, 35))
    assert log[30]["lr"] > log[29]["lr"]  # the cosine recomputed for 34 steps: step 31 is not at the old minimum


def test_outputs_that_would_overwrite_are_refused_before_work(env, trained, tmp_path):
    root, mdir, data, _ = env
    r = _run("tune", str(mdir), "--data", str(data), "-o", str(tmp_path / "again"), "--max-steps", "1", "--merge", "tiny-tuned",
             "--quiet", home=root / "store")
    assert "'tiny-tuned' is already in the store" in _one_error_line(r) and not (tmp_path / "again").exists()
    held = tmp_path / "held"
    held.mkdir()
    (held / "adapter_config.json").write_text("{}")  # someone's adapter
    r = _run("tune", str(mdir), "--data", str(data), "-o", str(held), "--max-steps", "1", "--quiet")
    assert "already holds adapter_config.json" in _one_error_line(r)
    assert (held / "adapter_config.json").read_text() == "{}"
    full = tmp_path / "full"
    (full / "model").mkdir(parents=True)
    (full / "model" / "precious.txt").write_text("keep")
    r = _run("tune", str(mdir), "--data", str(data), "-o", str(full), "--method", "full", "--max-steps", "1", "--quiet")
    assert "already holds model" in _one_error_line(r)
    assert (full / "model" / "precious.txt").read_text() == "keep"
    home = tmp_path / "store"
    r = _run("tune", str(mdir), "--data", str(data), "-o", str(home / "blobs"), "--max-steps", "1", "--quiet", home=home)
    assert "inside hearth's store" in _one_error_line(r)
    existing = tmp_path / "existing.gguf"
    existing.write_text("keep")
    r = _run("export-weights", str(mdir), "--format", "gguf", "-o", str(existing))
    assert "already exists" in _one_error_line(r) and existing.read_text() == "keep"
