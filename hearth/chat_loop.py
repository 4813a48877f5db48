"""The interactive chat of `hearth run`: read a message, stream the answer to the terminal, until /bye or end of input.

It sits above the engine (it drives a `hearth.engine.chat.ChatSession`) and below the command line, which only parses
options and calls it: a program that embeds hearth gets the same loop. It writes plain text to the streams it is given
(stdout and stderr by default) and reads through `read(prompt)` (`input` by default; on a terminal the CLI passes
hearth.chat_repl's line editor), which raises EOFError at the end of input and KeyboardInterrupt on Ctrl-C.

A line that begins with `/` and a word is a command (hearth/chat_commands.py), never sent to the model. A line that
begins with `\"\"\"` starts a message of several lines, ended by a line that ends with `\"\"\"`, sent as is. Ctrl-C
while an answer streams stops it and returns to the prompt; at the prompt it only says how to leave.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TextIO

from hearth.chat_commands import QUIT, ChatState, is_command, run_command
from hearth.errors import HearthError
from hearth.textsafe import terminal_safe

if TYPE_CHECKING:  # for the annotations only: importing this module stays cheap (no torch)
    from hearth.engine.chat import ChatSession
    from hearth.engine.generate import StreamChunk

__all__ = ["QUIT", "chat_loop", "print_stream", "read_message"]

BLOCK = '"""'


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


def read_message(read: Callable[[str], str]) -> tuple[str, bool]:
    """One message as typed: (text, literal). A `\"\"\"` block is read to its closing `\"\"\"` and is literal (sent to
    the model even if it begins with /)."""
    line = read(">>> ")
    if not line.lstrip().startswith(BLOCK):
        return line, False
    rest, parts = line.lstrip()[len(BLOCK):], []
    while not rest.rstrip().endswith(BLOCK):
        parts.append(rest)
        rest = read("... ")
    parts.append(rest.rstrip()[: -len(BLOCK)])
    return "\n".join(parts), True


def chat_loop(session: ChatSession, model_name: str, quantization: str, *, read: Callable[[str], str] = input,
              out: TextIO | None = None, err: TextIO | None = None, verbose: bool = False) -> None:
    """Chat on the terminal until /bye (/exit, /quit) or end of input (Ctrl-D); /help lists the commands.

    An error in one turn (e.g. a message longer than the context) is printed as one `error:` line and the chat goes
    on. verbose: print time to first token, speed and prompt tokens after each answer (/set verbose). `model_name`
    comes from the weights file (GGUF general.name), so it is made terminal-safe before it is printed.
    """
    out, err = out or sys.stdout, err or sys.stderr
    state = ChatState(verbose=verbose)
    print(f"hearth: chatting with {terminal_safe(model_name)} ({quantization}). /help for commands, /bye or Ctrl-D "
          "to quit.", file=err)
    while True:
        try:
            text, literal = read_message(read)
        except EOFError:
            print(file=out)
            return
        except KeyboardInterrupt:
            print("\n(Use Ctrl-D or /bye to exit.)", file=err)
            continue
        if not literal and is_command(text):
            try:
                if not run_command(text, session, state, err):
                    return
            except HearthError as e:
                print(f"error: {e}", file=err)
            continue
        text = text.strip()
        if text:
            answer(session, text, state, out, err)


def answer(session: ChatSession, text: str, state: ChatState, out: TextIO, err: TextIO) -> None:
    """Stream one answer; Ctrl-C stops it (the question stays in the history, the partial answer is dropped)."""
    start, first, n = time.perf_counter(), None, 0
    stream = session.send(text)
    try:
        for c in stream:
            if first is None:
                first = time.perf_counter()
            n += c.token_id is not None
            if c.text:
                out.write(c.text)
                out.flush()
    except KeyboardInterrupt:
        stream.close()
        print(file=out)
        return
    except HearthError as e:
        print(("\n" if first is not None else "") + f"error: {e}", file=err)
        return
    finally:
        out.flush()
    print(file=out)
    if session.dropped:
        print(f"(the conversation outgrew the context: its {session.dropped} oldest exchange(s) were dropped)",
              file=err)
    if state.verbose and first is not None:
        rate = (n - 1) / (time.perf_counter() - first) if n > 1 else 0.0
        print(f"ttft {(first - start) * 1000:.0f} ms, {rate:.1f} tok/s, prompt {session.prompt_tokens} tokens "
              f"({session.cached_tokens} cached)", file=err)
