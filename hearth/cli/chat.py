"""`hearth generate` and `hearth run`: one completion, or a chat with the model's own template."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from hearth.chat_loop import chat_loop, print_stream
from hearth.cli.options import GenerationOptions, ModelArg, Switches, generation_options
from hearth.errors import HearthError


def _said_length(result: dict, max_tokens: int) -> None:
    """End the answer's line; when the token limit cut it, say so on stderr (stdout stays the answer)."""
    print()
    if result["finish_reason"] == "length":
        print(f"(stopped at --max-tokens {max_tokens}; raise it for a longer answer)", file=sys.stderr)


@generation_options(max_tokens=128)
def generate(
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="Text to continue, used as is (no chat template).")],
    *,
    opts: GenerationOptions,
):
    """Raw completion: continue PROMPT with no chat template.

    Example: hearth generate smollm2 "The capital of France is" --temperature 0 --max-tokens 16
    """
    params = opts.sampling_params()
    lm = opts.load(model)
    from hearth.engine.generate import Generator

    ids = lm.tokenizer.encode(prompt)
    gen = Generator(lm.model, lm.tokenizer, compile=opts.compile, decoder=lm.decoder, **Switches.from_env().generator())
    if opts.json_out:
        c = gen.complete(ids, params)
        print(json.dumps({"prompt_token_ids": ids, "token_ids": c.token_ids, "text": c.text, "finish_reason": c.finish_reason}, ensure_ascii=False))
    else:
        _said_length(print_stream(gen.stream(ids, params)), params.max_tokens)


@generation_options(max_tokens=512)
def run(
    model: Annotated[str, typer.Argument(help="A store name (hearth list), a .gguf file, a HF model directory, or 'smollm2'.")] = "smollm2",
    prompt: Annotated[Optional[str], typer.Argument(help="Answer this once and exit; without it, chat interactively.")] = None,
    system: Annotated[Optional[str], typer.Option(help="A system message that starts the conversation.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="After each chat answer, print the time to the first "
                                          "token, tokens/s and the prompt's tokens (how many were cached).")] = False,
    *,
    opts: GenerationOptions,
):
    """Chat with a model using its own chat template. /help lists the commands; /bye or Ctrl-D quits.

    With PROMPT, or when stdin is not a terminal, answer once and exit. On a terminal the chat has line editing,
    history (in $HEARTH_HOME/chat_history), pastes of any length as one message, and Ctrl-C stops an answer.

    Example: hearth run smollm2 "Name three rivers in Europe."
    """
    params = opts.sampling_params()
    lm = opts.load(model)
    from hearth.engine.chat import ChatSession

    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise HearthError("no prompt: stdin was empty; pass PROMPT or pipe some text")
    elif prompt is not None and not prompt.strip():
        raise HearthError("the prompt is empty; give some text, or leave PROMPT out to chat")
    # One answer: no cache kept for later turns (it is sized to the prompt, not rounded up to a bucket).
    session = ChatSession(lm, params, system=system, compile=opts.compile, reuse=prompt is None,
                          **Switches.from_env().generator())
    if prompt is not None:
        if opts.json_out:
            c = session.complete(prompt)
            print(json.dumps({"prompt_token_ids": c.prompt_ids, "token_ids": c.token_ids, "text": c.text, "finish_reason": c.finish_reason}, ensure_ascii=False))
        else:
            _said_length(print_stream(session.send(prompt)), params.max_tokens)
        return
    read = input  # stdout not a terminal: the plain line reader, as before
    if sys.stdout.isatty():
        from hearth.chat_repl import terminal_reader
        from hearth.store.common import default_home

        read = terminal_reader(default_home() / "chat_history")
    chat_loop(session, lm.display_name, lm.checkpoint.quantization, read=read, verbose=verbose)
