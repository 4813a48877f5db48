"""The line editor of `hearth run` on a terminal (prompt_toolkit), as the `read` of hearth.chat_loop.

`input()` reads through the terminal's line discipline, which cuts a line at 4095 characters and ends a message at
each newline of a paste. prompt_toolkit reads keys in raw mode instead: no length limit, and a paste (bracketed
paste, which terminals send as one event) lands in the buffer whole, newlines included, as one message. Enter sends;
Alt-Enter (Esc, Enter) inserts a newline; Up/Down and Ctrl-R search the history, kept across sessions in a file
(only its owner can read it: chats are private). Ctrl-C raises KeyboardInterrupt and Ctrl-D on an empty line
EOFError, as input() does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

MAX_SAVED_ENTRY = 64 << 10  # longer messages (pastes) are recalled within the session but not written to the file


def terminal_reader(history: Path | None) -> Callable[[str], str]:
    """A `read(prompt)` for chat_loop; `history` is the file that keeps what was typed (None: this session only)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    class _History(FileHistory):
        def store_string(self, string: str) -> None:
            if len(string) <= MAX_SAVED_ENTRY:
                super().store_string(string)

    store = InMemoryHistory()
    if history is not None:
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(history, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            store = _History(str(history))
        except OSError:  # a read-only home: the chat works, only without saved history
            pass

    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _newline(event) -> None:
        event.current_buffer.insert_text("\n")

    session = PromptSession(history=store, key_bindings=keys, multiline=False,
                            prompt_continuation=lambda width, line, wrap: "... ".rjust(width))

    def read(prompt: str) -> str:
        return session.prompt(prompt)

    return read
