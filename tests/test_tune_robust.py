"""Tune data and tune runs that an attacker or a crash shapes: a 100 MB line, 100k nested brackets, a 100k-digit
integer, and `hearth tune` killed (SIGKILL) at several moments, each followed by the one command that recovers."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

import tune_kit
from hearth.errors import HearthError
from hearth.loader import load
from hearth.tune import data as D
from hearth.tune.checkpoint import checkpoint_path, unsaved_run
from hearth.tune.recipes import check_output_dir

pytestmark = pytest.mark.usefixtures("one_thread")

TIMEOUT = 240
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def mdir(tmp_path_factory):
    return tune_kit.model_dir(str(tmp_path_factory.mktemp("tune_robust")))


@pytest.fixture(scope="module")
def lm(mdir):
    return load(str(mdir), dtype="float32")


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode not in (0, -9), (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("hearth: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------- data

def _write_huge_line(path, good: list, at: int, size: int) -> None:
    """`good` records as JSONL with a `size`-byte {"text": ...} record as line `at`, written in 1 MB pieces."""
    with open(path, "wb") as f:
        for n, rec in enumerate(good, start=1):
            if n == at:
                f.write(b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "')
                for _ in range(size >> 20):
                    f.write(b"a" * (1 << 20))
                f.write(b'"}]}\n')
            f.write(json.dumps(rec).encode() + b"\n")


PEAK = textwrap.dedent('''
    import json, sys
    from hearth.errors import HearthError
    from hearth.loader import load
    from hearth.tune import data as D

    def peak_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    lm = load(sys.argv[1], dtype="float32")
    D.load_dataset(sys.argv[2], lm.tokenizer, lm.chat_template, on_bad_line="skip", overlong="drop")  # warm up
    before = peak_kib()
    drop = D.load_dataset(sys.argv[2], lm.tokenizer, lm.chat_template, overlong="drop")
    skip = D.load_dataset(sys.argv[2], lm.tokenizer, lm.chat_template, on_bad_line="skip")
    try:
        D.load_dataset(sys.argv[2], lm.tokenizer, lm.chat_template)
        stop = None
    except HearthError as e:
        stop = str(e)
    print(json.dumps({"grew_kib": peak_kib() - before, "drop": [len(drop.items), drop.dropped, drop.long_lines],
                      "skip": [len(skip.items), skip.bad_lines], "stop": stop}))
''')


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_a_100mb_line_is_never_read_whole(mdir, tmp_path):
    """Before: the line was read, parsed and tokenized in full (13 GB of RSS) and then dropped as overlong. Now it is
    skipped to its newline in 1 MiB pieces, so the peak RSS grows by a few MiB at most, under each policy."""
    f = tmp_path / "huge.jsonl"
    _write_huge_line(f, tune_kit.chat_records(5), at=3, size=100 << 20)
    assert f.stat().st_size > 100 << 20
    r = subprocess.run([sys.executable, "-c", PEAK, str(mdir), str(f)], capture_output=True, text=True, timeout=TIMEOUT,
                       env=ENV)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["grew_kib"] < 32 << 10, got  # the cap is 1 MiB (--max-len 1024); before: ~13 GiB
    assert got["drop"] == [5, 1, [3]]  # --overlong drop: dropped like any overlong example, the line named
    (n, why), = got["skip"][1]  # --overlong truncate: it cannot be cut unread, so it is a bad line
    assert got["skip"][0] == 5 and n == 3 and why.startswith("longer than 1,048,576 bytes")
    assert got["stop"].startswith(f"{f}:3: longer than 1,048,576 bytes") and "--overlong drop" in got["stop"]
    assert "line(s) longer than 1,048,576 bytes were dropped unread: 3" in r.stderr


def test_line_cap_follows_max_len_and_is_exact_at_the_boundary(lm, tmp_path):
    assert D.line_cap(1024) == 1 << 20 and D.line_cap(8192) == 3 * 64 * 8192
    recs = tune_kit.chat_records(3)
    f = tune_kit.write_jsonl(tmp_path / "d.jsonl", recs)
    longest = max(len(json.dumps(r).encode()) for r in recs)
    assert len(D.load_dataset(f, lm.tokenizer, lm.chat_template, max_line_bytes=longest).items) == 3
    ds = D.load_dataset(f, lm.tokenizer, lm.chat_template, max_line_bytes=longest - 1, overlong="drop")
    assert len(ds.items) < 3 and ds.long_lines and ds.dropped == len(ds.long_lines)
    # no newline after the last line, and CRLF line ends: the same records
    f.write_bytes(b"\r\n".join(json.dumps(r).encode() for r in recs))
    assert len(D.load_dataset(f, lm.tokenizer, lm.chat_template, max_line_bytes=longest + 1).items) == 3


NESTED = {
    "list": "[" * 100_000,
    "object": '{"a": ' * 100_000,
    "in_record": '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "giant_int": '{"messages": ' + "7" * 100_000 + "}",
    "int_field": '{"prompt": "x", "completion": "y", "n": -' + "1" * 5000 + "}",
    "not_utf8": b'{"prompt": "\xff\xfe", "completion": "y"}'.decode("latin-1"),
    "lone_surrogate": '{"prompt": "\\ud800 hi", "completion": "y"}',  # before: TypeError from the tokenizer
}


@pytest.mark.parametrize("case", sorted(NESTED))
def test_nested_and_giant_integer_lines_are_bad_lines(lm, tmp_path, case, caplog):
    """Before: RecursionError / ValueError (Python's 4300-digit limit) tracebacks, even with --on-bad-line skip. Now
    a bad line like any other: skipped and counted with skip, one error naming the line with stop."""
    recs = tune_kit.chat_records(4)
    lines = [json.dumps(r) for r in recs]
    lines.insert(2, NESTED[case])
    f = tmp_path / "n.jsonl"
    f.write_bytes("\n".join(lines).encode("latin-1" if case == "not_utf8" else "utf-8") + b"\n")
    with caplog.at_level(logging.WARNING, logger="hearth"):
        ds = D.load_dataset(f, lm.tokenizer, lm.chat_template, on_bad_line="skip")
    assert len(ds.items) == 4 and [n for n, _ in ds.bad_lines] == [3]
    assert "skipped 1 bad line(s): 3" in caplog.text
    want = {"giant_int": "holds an integer of 100,000 digits", "int_field": "holds an integer of 5,000 digits",
            "not_utf8": "not UTF-8 text", "lone_surrogate": "holds a lone UTF-16 surrogate"}
    want = want.get(case, r"nested 100,00\d levels deep; a record needs at most 64")
    with pytest.raises(HearthError, match=rf"n.jsonl:3: {want}.*--on-bad-line skip"):
        D.load_dataset(f, lm.tokenizer, lm.chat_template)


def test_brackets_inside_strings_do_not_count_as_nesting(lm, tmp_path):
    rec = {"messages": [{"role": "user", "content": "[{" * 5000 + '\\"]'}, {"role": "assistant", "content": "]]" * 100}]}
    f = tune_kit.write_jsonl(tmp_path / "s.jsonl", [rec])
    (ex,) = D.load_dataset(f, lm.tokenizer, lm.chat_template, max_len=100_000).items
    assert "[{" * 50 in lm.tokenizer.decode(ex.ids)
    # a whole surrogate pair escaped (json.dumps writes emoji so) is text, not a lone half
    f = tune_kit.write_jsonl(tmp_path / "e.jsonl", [{"prompt": "smile \U0001F600", "completion": "ok"}])
    assert '"smile \\ud83d\\ude00"' in f.read_text()
    assert len(D.load_dataset(f, lm.tokenizer, lm.chat_template).items) == 1


# --------------------------------------------------------------------------------------------- resume

# `hearth tune` in a child that SIGKILLs itself at one moment: after step 1 (before any checkpoint), halfway
# through writing the first (or the second) checkpoint, or halfway through writing the adapter. The half-written
# files are the real save's own bytes, cut short, in the place the real save writes them.
KILLER = textwrap.dedent('''
    import io, os, signal, sys
    import torch
    import hearth.tune.checkpoint as ck
    import hearth.tune.recipes as recipes
    import hearth.tune.report as report
    from hearth.cli import main

    where, args = sys.argv[1], sys.argv[2:]
    saves, real_save, real_write, real_adapter = [], torch.save, report.JsonLog.write, recipes.save_adapter

    def die(f=None, data=b""):
        if f is not None:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    def save(obj, f):
        saves.append(obj["step"])
        if (where, len(saves)) in (("first_save", 1), ("later_save", 2)):
            buf = io.BytesIO()
            real_save(obj, buf)
            die(f, buf.getvalue())
        real_save(obj, f)

    def write(self, rec):
        real_write(self, rec)
        if where == "first_step" and rec["step"] == 1:
            die()

    def adapter(model, lora, out_dir, **kw):
        real_adapter(model, lora, out_dir, **kw)
        data = open(os.path.join(out_dir, "adapter_model.safetensors"), "rb").read()
        with open(os.path.join(out_dir, "adapter_model.safetensors"), "wb") as f:
            die(f, data)

    ck.torch.save, report.JsonLog.write, recipes.save_adapter = save, write, adapter
    sys.exit(main(args))
''')


def _tune(mdir, data, out, *extra, killed_at=None):
    args = ["tune", str(mdir), "--data", str(data), "-o", str(out), "--max-steps", "4", "--batch-size", "4",
            "--save-every", "2", "--lr", "0.01", "--on-bad-line", "skip", "--quiet", *extra]
    cmd = [sys.executable, "-c", KILLER, killed_at, *args] if killed_at else [sys.executable, "-m", "hearth.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=ENV)


MOMENTS = ("first_step", "first_save", "later_save", "outputs")


@pytest.fixture(scope="module")
def runs(mdir, tmp_path_factory):
    """An uninterrupted run, a run killed at each moment, and (stop on bad lines) a run on a nested line, two at a
    time. The data holds a line of 100k `[` and one 100k-digit integer: every run skips both (--on-bad-line skip)."""
    root = tmp_path_factory.mktemp("runs")
    lines = [json.dumps(r) for r in tune_kit.chat_records(24)]
    lines[1], lines[4] = "[" * 100_000, '{"messages": ' + "9" * 100_000 + "}"
    chats = root / "chats.jsonl"
    chats.write_text("\n".join(lines) + "\n")
    jobs = {"clean": lambda: _tune(mdir, chats, root / "clean"),
            "stop": lambda: subprocess.run([sys.executable, "-m", "hearth.cli", "tune", str(mdir), "--data", str(chats),
                                            "-o", str(root / "stop"), "--quiet"], capture_output=True, text=True,
                                           timeout=TIMEOUT, env=ENV)}
    jobs.update({w: (lambda w=w: _tune(mdir, chats, root / w, killed_at=w)) for w in MOMENTS})
    with ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(job) for k, job in jobs.items()}
        done = {k: f.result() for k, f in futures.items()}
    assert done["clean"].returncode == 0, done["clean"].stderr
    assert "skipped 2 bad line(s): 2, 5" in done["clean"].stderr
    assert json.loads((root / "clean" / "summary.json").read_text())["bad_lines"] == 2
    return root, chats, done


def test_cli_nested_line_is_one_error_line_and_skip_trains(runs):
    """Before: RecursionError / ValueError tracebacks from `hearth tune`, even with --on-bad-line skip (the runs
    fixture trains past both lines with skip). Now, without skip, one error line naming the line."""
    root, _, done = runs
    assert "chats.jsonl:2: nested 100,000 levels deep; a record needs at most 64; fix the line or pass --on-bad-line " \
        "skip" in _one_error_line(done["stop"])
    assert not (root / "stop").exists()


def test_killed_during_its_first_checkpoint_save_restarts_with_resume(mdir, runs):
    """Before: a run killed (SIGKILL) while writing its first checkpoint was stuck: `--resume` said there was nothing
    to resume, and the command without it that the directory held another run. Now the command without --resume
    names --resume, and --resume starts the run over: it ends with the uninterrupted run's adapter, bit for bit."""
    root, chats, done = runs
    out = root / "first_save"
    assert done["first_save"].returncode == -signal.SIGKILL, done["first_save"].stderr
    # what the killed save left: its temporary file, half written; no state.pt
    assert [p.name for p in checkpoint_path(out).parent.iterdir()] == ["state.pt.tmp"] and unsaved_run(out)
    again = _one_error_line(_tune(mdir, chats, out))
    assert "stopped before its first checkpoint was complete" in again
    assert "run the same command with --resume to start it over" in again
    r = _tune(mdir, chats, out, "--resume")
    assert r.returncode == 0 and "4 steps" in r.stdout, r.stderr
    assert "starting it over" in r.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == (root / "clean" / "adapter_model.safetensors").read_bytes()
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert not list(checkpoint_path(out).parent.glob("*.tmp"))


def test_killed_at_other_moments_recovers_with_resume(mdir, runs):
    """Killed after step 1 (no checkpoint yet: started over), while writing the second checkpoint (the first is
    whole: resumed from it) and while writing the adapter (after the last checkpoint: finished from it). The command
    without --resume names --resume each time; with it, the run ends as the uninterrupted one did."""
    root, chats, done = runs
    for where in ("first_step", "later_save", "outputs"):
        out = root / where
        assert done[where].returncode == -signal.SIGKILL, (where, done[where].stderr)
        assert checkpoint_path(out).exists() == (where != "first_step") and unsaved_run(out) == (where == "first_step")
        with pytest.raises(HearthError, match="continue it with --resume|run the same command with --resume"):
            check_output_dir(out, resume=False)
    with ThreadPoolExecutor(2) as pool:
        resumed = dict(zip(("first_step", "later_save", "outputs"), pool.map(
            lambda w: _tune(mdir, chats, root / w, "--resume"), ("first_step", "later_save", "outputs"))))
    clean = json.loads((root / "clean" / "summary.json").read_text())
    for where, r in resumed.items():
        out = root / where
        assert r.returncode == 0 and "4 steps" in r.stdout, (where, r.stderr)
        assert ("starting it over" in r.stderr) == (where == "first_step")
        assert (out / "adapter_model.safetensors").read_bytes() == (root / "clean" / "adapter_model.safetensors").read_bytes()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 4 and summary["val_loss"] == clean["val_loss"] is not None, where


def test_output_states_and_the_command_each_names(tmp_path):
    """check_output_dir on each state a directory can be in, without training."""
    empty = tmp_path / "empty"
    assert check_output_dir(empty, resume=False) is False
    with pytest.raises(HearthError, match="nothing to resume: .* holds no checkpoint; run the same command without --resume"):
        check_output_dir(empty, resume=True)
    theirs = tmp_path / "theirs"  # someone's adapter and a log: not a run of ours to start over
    theirs.mkdir()
    (theirs / "adapter_config.json").write_text("{}")
    (theirs / "log.jsonl").write_text("")
    assert not unsaved_run(theirs)
    with pytest.raises(HearthError, match="already holds adapter_config.json"):
        check_output_dir(theirs, resume=False)
    with pytest.raises(HearthError, match="nothing to resume"):
        check_output_dir(theirs, resume=True)
    odd = tmp_path / "odd"  # a checkpoint directory holding something a save never writes
    (odd / "checkpoint").mkdir(parents=True)
    (odd / "checkpoint" / "notes.txt").write_text("mine")
    assert not unsaved_run(odd)
    with pytest.raises(HearthError, match="nothing to resume"):
        check_output_dir(odd, resume=True)
    torn = tmp_path / "torn"  # a damaged state.pt (not one of ours: they are renamed into place whole)
    checkpoint_path(torn).parent.mkdir(parents=True)
    checkpoint_path(torn).write_bytes(b"PK\x03\x04 cut short")
    (torn / "log.jsonl").write_text("")
    assert check_output_dir(torn, resume=True) is True
    from hearth.tune.checkpoint import load_checkpoint

    with pytest.raises(HearthError, match=r"cannot be read .*\(rm .*state.pt\) and run the same command with --resume"):
        load_checkpoint(torn)
    checkpoint_path(torn).unlink()  # what the message says to do; then --resume starts over
    assert unsaved_run(torn) and check_output_dir(torn, resume=True) is False
