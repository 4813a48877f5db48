"""The Llama Guard 3 prompt and answer, for any guard model.

The prompt text follows Llama Guard 3's own chat template (meta-llama/Llama-Guard-3-8B and -1B, and llama-recipes'
prompt_format_utils): the task naming the role checked ('User' for a prompt, 'Agent' for a response), the
BEGIN/END UNSAFE CONTENT CATEGORIES block, the conversation as "User: ...\\n\\nAgent: ...", and the instruction to
answer 'safe', or 'unsafe' and a line of category codes.

Two kinds of guard models read it:
- a Llama Guard model of the user's (its chat template builds this text itself from the messages and a
  `categories` mapping): `native_template` says so and its template renders the prompt;
- any other chat model fine-tuned as a guard (hearth's default guard, SmolLM2-135M + LoRA): the text is the user
  message of the model's own chat template, and the answer follows its generation prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hearth.errors import HearthError
from hearth.guard.taxonomy import Category

ROLES = {"user": "User", "assistant": "Agent"}
TASK = ("Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy "
        "with the below categories.")
INSTRUCTION = ("Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
               " - First line must read 'safe' or 'unsafe'.\n"
               " - If unsafe, a second line must include a comma-separated list of violated categories.")
NATIVE_MARK = "BEGIN UNSAFE CONTENT CATEGORIES"


class GuardInputError(HearthError):
    """Input the guard cannot classify (empty text, a conversation with no message of the checked role)."""


def check_messages(messages: list[dict], role: str) -> list[dict]:
    """The conversation to classify, checked: user/assistant messages with text, ending with a `role` message
    ('user' classifies a prompt, 'assistant' a response), in Llama Guard's shape: turns alternate and the first is the
    user's (its templates refuse anything else). System (and tool) messages are not part of the format and are left
    out; consecutive messages of one role are joined as one turn; assistant messages before the first user message
    (a greeting) are left out, so a response is checked with the prompt it answers."""
    if role not in ROLES:
        raise GuardInputError(f"unknown role {role!r}: use user or assistant")
    if not isinstance(messages, list):
        raise GuardInputError("the conversation must be a list of messages")
    turns: list[dict] = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise GuardInputError("each message needs a 'role' and a text 'content'")
        if m.get("role") not in ROLES or (not turns and m["role"] != "user"):
            continue
        if turns and turns[-1]["role"] == m["role"]:
            turns[-1] = {"role": m["role"], "content": turns[-1]["content"].strip() + "\n\n" + m["content"].strip()}
        else:
            turns.append({"role": m["role"], "content": m["content"]})
    last = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") in ROLES), None)
    if last is None or not last["content"].strip():
        raise GuardInputError("nothing to check: the input is empty")
    if last["role"] != role:
        raise GuardInputError(f"the conversation must end with a {role} message to check it as {role}")
    if not turns:  # a lone response: Llama Guard reads a response only after the prompt it answers
        raise GuardInputError("a response is checked with the prompt it answers: give the user message before it")
    return turns


def conversation_block(turns: list[dict]) -> str:
    return "".join(f"{ROLES[t['role']]}: {t['content'].strip()}\n\n" for t in turns)


def category_block(categories: list[Category], with_descriptions: bool = False) -> str:
    """Llama Guard 3 lists its own categories by name only; a custom category (one Llama Guard never saw) also
    carries its description, as llama-recipes' `with_policy` does, since the model knows it only from that text."""
    return "\n".join(c.line(with_descriptions or not c.code_is_builtin) for c in categories)


def guard_text(turns: list[dict], role: str, categories: list[Category]) -> str:
    """The Llama Guard 3 prompt text (without the model's special tokens)."""
    who = ROLES[role]
    return (f"{TASK.format(role=who)}\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n{category_block(categories)}\n"
            f"<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n{conversation_block(turns)}"
            f"<END CONVERSATION>\n\n{INSTRUCTION.format(role=who)}")


def native_template(source: str | None) -> bool:
    """A Llama Guard model's own template (it builds the categories block itself)."""
    return bool(source) and NATIVE_MARK in source


@dataclass(frozen=True)
class Answer:
    unsafe: bool | None  # None: the model answered neither safe nor unsafe
    codes: tuple[str, ...] = ()


_CODE = re.compile(r"\b([A-Z]{1,3}\d{1,3})\b", re.IGNORECASE)


def parse_answer(text: str) -> Answer:
    """'safe' -> safe; 'unsafe' then a line of comma-separated codes -> unsafe with those codes (upper-cased, in
    order, each once). Case and surrounding blank lines are forgiven (Llama Guard 3 answers '\\n\\nsafe'); any other
    first line is no answer (unsafe None), and 'unsafe' with no codes line is unsafe with no codes."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return Answer(None)
    first = lines[0].lower()
    if first == "safe":
        return Answer(False)
    if first != "unsafe":
        return Answer(None)
    codes = [c.upper() for c in _CODE.findall(lines[1])] if len(lines) > 1 else []
    return Answer(True, tuple(dict.fromkeys(codes)))
