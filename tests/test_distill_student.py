"""`hearth distill --student CONFIG`: Hugging Face or hearth key names over the teacher's shape, `{}` the teacher's
own shape, unknown keys one error line listing them; the example config trains from the README's command; the
progress bar says distill and which time is elapsed and which is left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tune_kit
from hearth.config import ModelConfig
from hearth.errors import HearthError
from hearth.loader import load
from hearth.tune.recipes import distill
from hearth.tune.student import student_config
from hearth.tune.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
TEACHER = ModelConfig(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536, norm_eps=1e-5,
                      rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True)


def _cfg(tmp_path, d) -> ModelConfig:
    (tmp_path / "s.json").write_text(json.dumps(d))
    return student_config(tmp_path / "s.json", TEACHER)


def test_hf_and_hearth_names_over_the_teacher_shape(tmp_path):
    hf = _cfg(tmp_path, {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3, "num_key_value_heads": 1,
                         "intermediate_size": 512, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                         "max_position_embeddings": 1024, "rope_theta": 10000, "vocab_size": 49152})
    own = _cfg(tmp_path, {"dim": 192, "n_layers": 4, "n_heads": 3, "n_kv_heads": 1, "hidden_dim": 512, "norm_eps": 1e-6,
                          "tie_embeddings": False, "max_seq_len": 1024, "rope_theta": 10000.0})
    assert hf == own
    assert (hf.dim, hf.n_layers, hf.head_dim, hf.hidden_dim, hf.max_seq_len, hf.rope_theta) == (192, 4, 64, 512, 1024, 10000.0)
    assert _cfg(tmp_path, {}) == TEACHER  # every key left out is the teacher's
    deep = _cfg(tmp_path, {"num_hidden_layers": 8})
    assert deep.n_layers == 8 and (deep.dim, deep.vocab_size, deep.rope_theta, deep.tie_embeddings) == (576, 49152, 100000.0, True)
    example = student_config(ROOT / "examples" / "student.json", TEACHER)
    assert (example.n_layers, example.dim, example.vocab_size) == (4, 192, 49152)


@pytest.mark.parametrize("d, want", [
    ({"hidden_size": 64, "num_layers": 2, "model_type": "llama"}, "unknown key(s) model_type, num_layers; a student config takes dim, head_dim, hidden_dim, hidden_size"),
    ({"hidden_size": 64, "dim": 64}, "dim is given twice"),
    ({"num_hidden_layers": "4"}, "num_hidden_layers must be a positive integer, not '4'"),
    ({"num_attention_heads": 4}, "n_heads (4) must be a multiple of n_kv_heads (3)"),
    ([1, 2], "a student config is a JSON object"),
])
def test_bad_student_configs_are_one_line_errors(tmp_path, d, want):
    with pytest.raises(HearthError) as e:
        _cfg(tmp_path, d)
    assert want in str(e.value) and "\n" not in str(e.value)


def test_distill_bar_is_labelled_distill_with_elapsed_and_left(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # rich shortens columns to the terminal's width
    mdir = tune_kit.model_dir(str(tmp_path))
    lm = load(str(mdir), dtype="float32")
    (tmp_path / "s.json").write_text(json.dumps({"num_hidden_layers": 1, "hidden_size": 48, "num_attention_heads": 2,
                                                  "num_key_value_heads": 1, "intermediate_size": 64}))
    data = tune_kit.write_jsonl(tmp_path / "c.jsonl", [{"text": f"word {i} is blue"} for i in range(12)])
    cfg = TrainConfig(max_steps=3, batch_size=4, lr=3e-3, warmup_steps=1, val_fraction=0.2)
    distill(str(mdir), str(tmp_path / "s.json"), data, tmp_path / "kd", cfg, progress=True, teacher=lm)
    err = capfd.readouterr().err
    bar = [ln for ln in err.splitlines() if "3/3" in ln][-1]
    assert bar.lstrip().startswith("distill") and "full" not in bar
    assert "elapsed 0:00:" in bar and bar.rstrip().endswith("left") and "tok/s ·" in bar


def test_readme_distill_command_with_the_example_files(tmp_path):
    """The README's command, from the repository root, with the shipped student config and corpus (tiny teacher)."""
    mdir = tune_kit.model_dir(str(tmp_path))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "hearth.cli", "distill", "--teacher", str(mdir), "--student", "examples/student.json",
                        "--data", "examples/corpus.jsonl", "-o", str(tmp_path / "st"), "--max-steps", "2", "--quiet"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "student: 4 layers, hidden_size 192" in r.stderr
    cfg = json.loads((tmp_path / "st" / "model" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"]) == (4, 192)
    h = subprocess.run([sys.executable, "-m", "hearth.cli", "distill", "--help"], capture_output=True, text=True, env=env,
                       timeout=60, cwd=ROOT)
    flat = " ".join(h.stdout.split())
    assert "num_hidden_layers" in flat and "examples/student.json" in flat and "teacher's" in flat
