"""The interactive chat of `hearth run`: read a line, stream the answer to the terminal, until /bye or end of input.

It sits above the engine (it drives a `hearth.engine.chat.ChatSession`) and below the command line, which only parses
options and calls it: a program that embeds hearth gets the same loop. It writes plain text to the streams it is given
(stdout and stderr by default) and reads lines through `read` (`input` by default, so readline editing works).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TextIO

from hearth.errors import HearthError
from hearth.textsafe import terminal_safe

if TYPE_CHECKING:  # for the annotations only: importing this module stays cheap (no torch)
    from hearth.engine.chat import ChatSession
    from hearth.engine.generate import StreamChunk

QUIT = ("/bye", "/exit", "/quit")


def print_stream(chunks: Iterable[StreamChunk], out: TextIO | None = None) -> dict:
    """Write each chunk's text to `out` (stdout) as it comes; return the token ids, the text and the finish reason."""
    out = out or sys.stdout
    ids, parts, reason = [], [], None
    for c in chunks:
        if c.text:
            out.write(c.text)
            out.flush()
            parts.append(c.text)
        if c.token_id is not None:
            ids.append(c.token_id)
        reason = c.finish_reason or reason
    return {"token_ids": ids, "text": "".join(parts), "finish_reason": reason}


def chat_loop(session: ChatSession, model_name: str, quantization: str, *, read: Callable[[str], str] = input,
              out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Chat on the terminal until /bye (/exit, /quit) or end of input; /clear forgets the conversation.

    An error in one turn (e.g. a message longer than the context) is printed and the chat goes on. `model_name` comes
    from the weights file (GGUF general.name), so it is made terminal-safe before it is printed.
    """
    out, err = out or sys.stdout, err or sys.stderr
    print(f"hearth: chatting with {terminal_safe(model_name)} ({quantization}). /bye to quit, /clear to reset.", file=err)
    while True:
        try:
            line = read(">>> ")
        except EOFError:
            print(file=out)
            return
        text = line.strip()
        if not text:
            continue
        if text in QUIT:
            return
        if text == "/clear":
            session.reset()
            print("(conversation cleared)", file=err)
            continue
        try:
            print_stream(session.send(text), out)
        except HearthError as e:
            print(f"\nerror: {e}", file=err)
        print(file=out)
        if session.dropped:
            print(f"(the conversation outgrew the context: its {session.dropped} oldest exchange(s) were dropped)",
                  file=err)
