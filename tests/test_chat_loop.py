"""hearth.chat_loop: `hearth run`'s interactive loop, driven through its injectable line reader and streams with a
fake session (the real one runs in tests/test_cli.py on a pseudo-terminal)."""

import io
from types import SimpleNamespace

from hearth.chat_loop import chat_loop, print_stream
from hearth.errors import HearthError


class FakeSession:
    def __init__(self):
        self.sent, self.resets, self.dropped = [], 0, 0

    def send(self, text):
        self.sent.append(text)
        if text == "too long":
            raise HearthError("the message is longer than the context")
        self.dropped = 1 if text == "third" else 0
        yield SimpleNamespace(text="echo: ", token_id=1, finish_reason=None)
        yield SimpleNamespace(text=text, token_id=2, finish_reason="stop")

    def reset(self):
        self.resets += 1


def _chat(lines):
    session, out, err = FakeSession(), io.StringIO(), io.StringIO()
    feed = iter(lines)

    def read(prompt):
        out.write(prompt)
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    chat_loop(session, "Tiny\x1b]0;pwned\x07", "Q4_0", read=read, out=out, err=err)
    return session, out.getvalue(), err.getvalue()


def test_a_conversation_until_bye():
    session, out, err = _chat(["hello", "   ", "/clear", "too long", "third", "/bye", "never read"])
    assert session.sent == ["hello", "too long", "third"] and session.resets == 1
    assert out == ">>> echo: hello\n>>> >>> >>> >>> echo: third\n>>> "  # a turn refused before any text adds no line
    assert "chatting with Tiny\\x1b]0;pwned\\x07 (Q4_0)" in err and "\x1b" not in err  # the name is the file's own
    assert "(conversation cleared)" in err
    assert "\nerror: the message is longer than the context" in err  # one bad turn does not end the chat
    assert "its 1 oldest exchange(s) were dropped" in err


def test_end_of_input_ends_the_chat_with_a_newline():
    session, out, _ = _chat(["hi"])
    assert session.sent == ["hi"] and out == ">>> echo: hi\n>>> \n"


def test_print_stream_returns_what_it_wrote():
    out = io.StringIO()
    r = print_stream(FakeSession().send("x"), out)
    assert out.getvalue() == "echo: x" and r == {"token_ids": [1, 2], "text": "echo: x", "finish_reason": "stop"}
