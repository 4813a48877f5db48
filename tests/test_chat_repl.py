"""hearth.chat_loop and its commands, in process with a tiny real model: what is typed reaches the model or not,
commands change the session, bad input is one `error:` line, Ctrl-C stops an answer and the chat goes on."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from hearth.chat_loop import chat_loop, read_message
from hearth.engine.chat import ChatSession
from hearth.engine.sampling import SamplingParams
from hearth.model import Transformer
from hearth.tokenizer import ChatTemplate
from hearth.tokenizer.chat import CHATML

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    from store_kit import _tiny_parts

    cfg, state, tok = _tiny_parts()
    model = Transformer(cfg).eval()
    model.load_state_dict(state, strict=False)
    return SimpleNamespace(model=model, tokenizer=tok, chat_template=ChatTemplate(CHATML, tok.special_tokens))


def session(lm, **kw) -> ChatSession:
    return ChatSession(lm, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True), **kw)


def script(*items):
    """A `read` that returns each item in turn (an exception instance is raised), then ends the input."""
    it = iter(items)

    def read(prompt: str) -> str:
        item = next(it, EOFError())
        if isinstance(item, BaseException):
            raise item
        return item

    return read


def run(s: ChatSession, *items, out=None, verbose=False) -> tuple[str, str]:
    out, err = out or io.StringIO(), io.StringIO()
    chat_loop(s, "tiny", "F32", read=script(*items), out=out, err=err, verbose=verbose)
    return out.getvalue(), err.getvalue()


def test_commands_never_reach_the_model(lm):
    s = session(lm)
    _, err = run(s, "/help", "/?", "/show", "/frobnicate now", "/set temperature 0.2", "/set verbose")
    assert s.messages == []  # nothing was sent
    assert "Commands" in err and "unknown command /frobnicate" in err and 'put it between """' in err
    assert s.params.temperature == 0.2 and "verbose on" in err


def test_bad_settings_are_one_error_line_and_change_nothing(lm):
    s = session(lm)
    _, err = run(s, "/set temperature hot", "/set top_p 3", "/set colour red", "/set", "/load", "Hi")
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 5, err
    assert "not a number" in lines[0] and "top_p" in lines[1] and "KEY one of temperature" in lines[2]
    assert s.params.temperature == 0 and s.params.top_p == 1.0
    assert [m["role"] for m in s.messages] == ["user", "assistant"]  # and the chat went on


def test_a_path_or_a_spaced_slash_is_a_message(lm):
    s = session(lm)
    run(s, "/usr/bin/env is what?", " /help me", '"""/bye', 'literally"""')
    assert [m["content"] for m in s.messages if m["role"] == "user"] == [
        "/usr/bin/env is what?", "/help me", "/bye\nliterally"]


def test_multiline_block():
    read = script('"""', "first line", "", "  indented", 'last"""')
    assert read_message(read) == ("\nfirst line\n\n  indented\nlast", True)
    assert read_message(script('"""one line"""')) == ("one line", True)
    assert read_message(script("plain")) == ("plain", False)


def test_save_load_and_system(lm, tmp_path):
    s = session(lm, system="Be brief.")
    path = tmp_path / "chat.json"
    run(s, "Hello there", "/system Answer in French.", f"/save {path}")
    saved = json.loads(path.read_text())
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]  # /system kept the conversation
    assert saved[0]["content"] == "Answer in French."
    t = session(lm)
    _, err = run(t, f"/load {path}", "/clear")
    assert "loaded 3 messages" in err and t.messages == [saved[0]]  # /clear keeps the loaded system message


@pytest.mark.parametrize("content,why", [
    ("{\"role\": \"user\"}", "expected a JSON list"),
    ('[{"role": "wizard", "content": "x"}]', "role 'wizard'"),
    ('[{"role": "user", "content": 3}]', "is not"),
    ('[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]', "only the first"),
    ("[[[[[[[[[[]]]]]]]]]]", "not a saved chat"),
    ("not json", "not a saved chat"),
])
def test_load_refuses_what_is_not_a_chat(lm, tmp_path, content, why):
    s = session(lm)
    s.messages = [{"role": "user", "content": "kept"}, {"role": "assistant", "content": "yes"}]
    path = tmp_path / "bad.json"
    path.write_text(content)
    _, err = run(s, f"/load {path}")
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and why in errors[0], err
    assert s.messages[0]["content"] == "kept"


class InterruptingOut(io.StringIO):
    """A terminal on which the user presses Ctrl-C once `after` pieces of the answer have been written."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def write(self, text: str) -> int:
        if text.strip():
            self.after -= 1
            if self.after == 0:
                raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(lm):
    s = ChatSession(lm, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    run(s, "First question")
    out = InterruptingOut(after=3)
    _, err = run(s, "Second question", KeyboardInterrupt(), "Third question", out=out, verbose=True)
    # the second answer was stopped: its question stays, its partial answer does not
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "user", "assistant"]
    assert out.getvalue().strip()  # the partial answer was on the screen
    assert "Use Ctrl-D or /bye to exit" in err  # Ctrl-C at the prompt
    assert err.count("ttft") == 1  # statistics for the finished answer only


def test_context_error_is_one_line_and_the_chat_goes_on(lm):
    s = session(lm)
    _, err = run(s, "lorem ipsum " * 400, "Hi")
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "context of 512" in errors[0], err
    assert [m["role"] for m in s.messages] == ["user", "assistant"]
