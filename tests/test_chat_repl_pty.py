"""The real `hearth run smollm2` on a pseudo-terminal (TERM=xterm: prompt_toolkit's full line editor, bracketed
paste on), driven as a person at a terminal would: pastes sent with the terminal's bracketed-paste escapes, Ctrl-C
mid-answer, and the time to the first token of turns as the conversation grows (`--verbose`).

One chat process (the model loads once) serves the tests of this module, in order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

import pytest

pexpect = pytest.importorskip("pexpect")

READY = "\x1b[?2004h"  # the editor turns bracketed paste on when it starts reading: the prompt is ready
STATS = re.compile(r"ttft (\d+) ms, [\d.]+ tok/s, prompt (\d+) tokens \((\d+) cached\)")
TIMEOUT = 120


class Chat:
    def __init__(self, home, *args: str):
        env = dict(os.environ, HEARTH_HOME=str(home), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1")
        # SIGINT back to its default in the child: a test run started in the background by a shell without job
        # control has it ignored, the child would inherit that, and Python then leaves Ctrl-C ignored
        self.p = pexpect.spawn(sys.executable, ["-m", "hearth.cli", "run", "smollm2", "--temperature", "0", *args],
                               env=env, encoding="utf-8", codec_errors="replace", timeout=TIMEOUT,
                               dimensions=(40, 160), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.log: list[str] = []
        self.ready()

    def ready(self, timeout: float = TIMEOUT) -> str:
        """Wait for the next prompt; the output since the last one."""
        self.p.expect_exact(READY, timeout=timeout)
        self.log.append(self.p.before)
        return self.p.before

    def type(self, line: str) -> str:
        self.p.send(line + "\r")
        return self.ready()

    def paste(self, text: str) -> str:
        self.p.send("\x1b[200~" + text + "\x1b[201~")
        self.p.send("\r")
        return self.ready()


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    c = Chat(tmp_path_factory.mktemp("hearth-home"), "--max-tokens", "8", "--verbose")
    yield c
    if c.p.isalive():
        c.p.sendcontrol("d")
        c.p.expect(pexpect.EOF, timeout=20)
    c.p.close(force=True)


def test_20000_character_paste_arrives_whole(chat):
    """The issue: a long paste was cut at 4,095 characters (the terminal's line limit) and answered. Here 20,000
    characters of '7 ' (two tokens each pair) reach the model whole: the context error counts all 20,000 tokens (a
    paste cut at 4,095 characters would have fit and been answered)."""
    out = chat.paste("7 " * 10_000)
    m = re.search(r"error: prompt \((\d+) tokens\) \+ max tokens \(8\) exceeds the model's context of 8192", out)
    assert m, out[-2000:]
    assert 20_000 <= int(m.group(1)) < 20_100
    assert "Traceback" not in out
    out = chat.type("Hi")  # the chat goes on
    assert STATS.search(out), out[-2000:]


def test_30_line_paste_is_one_message(chat):
    lines = [f"Line {i}: the river number {i} flows to the sea." for i in range(1, 31)]
    before = sum(len(STATS.findall(x)) for x in chat.log)
    out = chat.paste("\n".join(lines))
    answers = STATS.findall(out)
    assert len(answers) == 1, out[-3000:]
    assert int(answers[0][1]) > 30 * 12  # every line is in the one prompt
    time.sleep(1.0)
    out = chat.type("/show")  # nothing more was answered meanwhile
    assert "temperature=0.0" in out
    assert sum(len(STATS.findall(x)) for x in chat.log) == before + 1


def test_ctrl_c_stops_the_answer_and_keeps_the_history(chat, tmp_path):
    chat.type("/clear")
    chat.type("My cat is called Tiberius.")
    chat.type("/set max_tokens 400")
    chat.p.send("Write a long story about a dragon and a knight.\r")
    chat.p.expect_exact("Once upon a time", timeout=TIMEOUT)  # the answer is streaming (greedy: a long story)
    chat.p.sendintr()
    out = chat.ready(timeout=30)  # back at the prompt, the chat still running
    assert not STATS.search(out), out[-2000:]  # no statistics: the answer was stopped, not finished
    saved = tmp_path / "chat.json"
    chat.type(f"/save {saved}")
    messages = json.loads(saved.read_text())
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "Tiberius" in messages[0]["content"] and messages[2]["content"].startswith("Write a long story")
    chat.type("/set max_tokens 8")
    chat.p.sendintr()  # at an empty prompt Ctrl-C does not quit
    out = chat.ready()
    assert "Use Ctrl-D or /bye to exit" in out and chat.p.isalive()


def test_turns_reuse_the_cache(chat):
    """Each turn's time to first token stays flat as the history grows: turn 4 sends ~4x turn 1's prompt but
    prefills only its own ~200 new tokens."""
    chat.type("/clear")
    words = "river mountain city forest ocean bridge garden castle village meadow".split()
    stats = []
    for i in range(4):
        text = f"Part {i}. " + " ".join(words[(i * 3 + j) % len(words)] for j in range(190)) + " One word?"
        m = STATS.search(chat.type(text))
        assert m, chat.log[-1][-2000:]
        stats.append(tuple(int(x) for x in m.groups()))
    (t1, p1, _), (t4, p4, c4) = stats[0], stats[3]
    assert p4 > 3.5 * p1, stats  # the history grew
    assert t4 <= 1.5 * t1, stats
    assert c4 > p4 - p1, stats  # all but about one turn's tokens came from the cache
