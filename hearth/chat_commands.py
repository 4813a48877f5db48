"""The slash commands of `hearth run`'s chat: they act on the session and the loop's settings, never reach the model.

`run_command(line, session, state)` handles one line that starts with a command word (`/` and letters) and returns
what the chat should do next: go on, or quit. A problem with a command (a bad value, a file that is no conversation)
is a HearthError with one line, which the loop prints as `error: ...`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from hearth.errors import HearthError

if TYPE_CHECKING:
    from hearth.engine.chat import ChatSession

QUIT = ("/bye", "/exit", "/quit")
COMMAND = re.compile(r"/[A-Za-z?]+")  # a command word; "/usr/bin/env is what?" or "/ hi" is a message
MAX_LOAD_BYTES = 16 << 20
ROLES = ("system", "user", "assistant")

# /set KEY: (the SamplingParams field, how the value is read)
SETTINGS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "max_tokens": ("max_tokens", int),
    "seed": ("seed", int),
    "repeat_penalty": ("repetition_penalty", float),
}

HELP = f"""Commands (never sent to the model):
  /help, /?             this help
  /clear                forget the conversation (the system message stays)
  /bye, /exit, /quit    leave the chat (or Ctrl-D)
  /system TEXT          set the system message; the conversation so far is kept (/system alone shows it)
  /set KEY VALUE        KEY: {", ".join(SETTINGS)}
  /set verbose | quiet  after each answer, print time to first token, speed and prompt tokens (cached) | stop
  /show                 the current settings
  /save FILE            write the conversation to FILE as JSON messages
  /load FILE            continue the conversation saved in FILE
Keys: Enter sends; Alt-Enter (Esc then Enter) starts a new line; a paste is one message, newlines and all;
  \"\"\" starts and ends a multi-line message (sent as is: begin with \"\"\" or a space to send a line starting with /);
  Up/Down recall earlier messages; Ctrl-C stops an answer (the question stays, the partial answer is dropped);
  Ctrl-D quits."""


@dataclass
class ChatState:
    """What the loop keeps beside the session: verbose statistics after each answer."""

    verbose: bool = False


def is_command(line: str) -> bool:
    """Whether a line as typed (not stripped) is a command: it begins with `/` and a word."""
    return line.startswith("/") and COMMAND.fullmatch(line.split(maxsplit=1)[0]) is not None


def run_command(text: str, session: ChatSession, state: ChatState, err: TextIO) -> bool:
    """Carry out one command line; False when the chat should end."""
    word, _, rest = text.strip().partition(" ")
    rest = rest.strip()
    if word in QUIT:
        return False
    if word in ("/help", "/?"):
        print(HELP, file=err)
    elif word == "/clear":
        session.reset()
        print("(conversation cleared)", file=err)
    elif word == "/system":
        if not rest:
            print(f"system: {session.system!r}" if session.system else "(no system message)", file=err)
        else:
            set_system(session, rest)
            print("(system message set; the conversation goes on)", file=err)
    elif word == "/set":
        set_option(rest, session, state, err)
    elif word == "/show":
        p = session.params
        values = {key: getattr(p, name) for key, (name, _) in SETTINGS.items()}
        print("  ".join(f"{k}={v}" for k, v in values.items()) + f"  verbose={state.verbose}", file=err)
        print(f"system: {session.system!r}  messages: {len(session.messages)}", file=err)
    elif word == "/save":
        n = save(session, rest)
        print(f"(saved {n} messages to {rest})", file=err)
    elif word == "/load":
        n = load(session, rest)
        print(f"(loaded {n} messages from {rest})", file=err)
    else:
        print(f"unknown command {word}: /help lists them. To send it to the model as text, begin the message with a "
              'space, or put it between """ lines.', file=err)
    return True


def set_system(session: ChatSession, text: str | None) -> None:
    session.system = text
    rest = [m for m in session.messages if m["role"] != "system"]
    session.messages = ([{"role": "system", "content": text}] if text else []) + rest


def set_option(rest: str, session: ChatSession, state: ChatState, err: TextIO) -> None:
    parts = rest.split()
    if parts in (["verbose"], ["quiet"]):
        state.verbose = parts[0] == "verbose"
        print(f"(verbose {'on' if state.verbose else 'off'})", file=err)
        return
    if len(parts) != 2 or parts[0] not in SETTINGS:
        raise HearthError(f"/set takes KEY VALUE with KEY one of {', '.join(SETTINGS)}, or /set verbose | quiet")
    key, value = parts
    name, kind = SETTINGS[key]
    try:
        parsed = kind(value)
    except ValueError:
        raise HearthError(f"/set {key}: {value!r} is not {'an integer' if kind is int else 'a number'}") from None
    session.params = dataclasses.replace(session.params, **{name: parsed})  # SamplingParams checks the range


def save(session: ChatSession, path: str) -> int:
    if not path:
        raise HearthError("/save needs a file name: /save chat.json")
    from hearth.store.common import check_outside_store

    check_outside_store(Path(path), "the /save file")
    try:
        Path(path).expanduser().write_text(json.dumps(session.messages, ensure_ascii=False, indent=1) + "\n")
    except OSError as e:
        raise HearthError(f"cannot write {path}: {e.strerror}") from None
    return len(session.messages)


def load(session: ChatSession, path: str) -> int:
    """Replace the conversation with the one saved in `path`: a JSON list of {"role", "content"} messages (what /save
    writes), at most 16 MiB; a system message only first. Nothing changes unless the whole file is good."""
    if not path:
        raise HearthError("/load needs a file name: /load chat.json")
    from hearth.safejson import loads

    p = Path(path).expanduser()
    try:
        if p.stat().st_size > MAX_LOAD_BYTES:
            raise HearthError(f"{path} is larger than {MAX_LOAD_BYTES >> 20} MiB; a saved chat is smaller")
        messages = loads(p.read_text(encoding="utf-8"), max_depth=4, max_bytes=MAX_LOAD_BYTES)
    except OSError as e:
        raise HearthError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HearthError(f"{path} is not a saved chat (JSON messages): {str(e).splitlines()[0]}") from None
    bad = _invalid(messages)
    if bad:
        raise HearthError(f"{path} is not a saved chat: {bad}; /save writes one")
    session.system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    session.messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    return len(messages)


def _invalid(messages) -> str | None:
    if not isinstance(messages, list):
        return "expected a JSON list of messages"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or not isinstance(m.get("content"), str):
            return f"message {i + 1} is not {{\"role\": ..., \"content\": \"text\"}}"
        if m.get("role") not in ROLES:
            return f"message {i + 1} has role {str(m.get('role'))[:20]!r}, not one of {', '.join(ROLES)}"
        if m["role"] == "system" and i:
            return f"message {i + 1} is a system message; only the first may be"
    return None
