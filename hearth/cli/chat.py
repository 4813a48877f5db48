"""`hearth generate` and `hearth run`: one completion, or a chat with the model's own template."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from hearth.cli.options import (
    Adapter, Compile, Device, DType, Grammar, Json, JsonSchema, KVCacheType, LogitBias, MaxTokens, MinP, ModelArg,
    RepeatPenalty, Seed, Stop, Temperature, TopK, TopP, load_model, sampling_params,
)
from hearth.errors import HearthError


def _print_stream(chunks) -> dict:
    ids, parts, reason = [], [], None
    for c in chunks:
        if c.text:
            sys.stdout.write(c.text)
            sys.stdout.flush()
            parts.append(c.text)
        if c.token_id is not None:
            ids.append(c.token_id)
        reason = c.finish_reason or reason
    return {"token_ids": ids, "text": "".join(parts), "finish_reason": reason}


def generate(
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="Text to continue, used as is (no chat template).")],
    max_tokens: MaxTokens = 128,
    temperature: Temperature = 0.8,
    top_p: TopP = 0.95,
    top_k: TopK = 40,
    min_p: MinP = 0.05,
    repeat_penalty: RepeatPenalty = 1.0,
    seed: Seed = None,
    stop: Stop = None,
    device: Device = "cpu",
    dtype: DType = "auto",
    kv_cache: KVCacheType = "auto",
    json_out: Json = False,
    json_schema: JsonSchema = None,
    grammar: Grammar = None,
    logit_bias: LogitBias = None,
    adapter: Adapter = None,
    compile: Compile = False,
):
    """Raw completion: continue PROMPT with no chat template.

    Example: hearth generate smollm2 "The capital of France is" --temperature 0 --max-tokens 16
    """
    params = sampling_params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop, json_schema, grammar,
                     logit_bias)
    lm = load_model(model, device, dtype, adapter, kv_cache)
    from hearth.engine.generate import Generator

    ids = lm.tokenizer.encode(prompt)
    gen = Generator(lm.model, lm.tokenizer, compile=compile)
    if json_out:
        c = gen.complete(ids, params)
        print(json.dumps({"prompt_token_ids": ids, "token_ids": c.token_ids, "text": c.text, "finish_reason": c.finish_reason}, ensure_ascii=False))
    else:
        _print_stream(gen.stream(ids, params))
        print()


def run(
    model: Annotated[str, typer.Argument(help="A store name (hearth list), a .gguf file, a HF model directory, or 'smollm2'.")] = "smollm2",
    prompt: Annotated[Optional[str], typer.Argument(help="Answer this once and exit; without it, chat interactively.")] = None,
    system: Annotated[Optional[str], typer.Option(help="A system message that starts the conversation.")] = None,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = 0.8,
    top_p: TopP = 0.95,
    top_k: TopK = 40,
    min_p: MinP = 0.05,
    repeat_penalty: RepeatPenalty = 1.0,
    seed: Seed = None,
    stop: Stop = None,
    device: Device = "cpu",
    dtype: DType = "auto",
    kv_cache: KVCacheType = "auto",
    json_out: Json = False,
    json_schema: JsonSchema = None,
    grammar: Grammar = None,
    logit_bias: LogitBias = None,
    adapter: Adapter = None,
    compile: Compile = False,
):
    """Chat with a model using its own chat template. Type /bye to quit, /clear to forget the conversation.

    With PROMPT, or when stdin is not a terminal, answer once and exit.

    Example: hearth run smollm2 "Name three rivers in Europe."
    """
    params = sampling_params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop, json_schema, grammar,
                     logit_bias)
    lm = load_model(model, device, dtype, adapter, kv_cache)
    from hearth.engine.chat import ChatSession

    session = ChatSession(lm, params, system=system, compile=compile)
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise HearthError("no prompt: stdin was empty; pass PROMPT or pipe some text")
    elif prompt is not None and not prompt.strip():
        raise HearthError("the prompt is empty; give some text, or leave PROMPT out to chat")
    if prompt is not None:
        if json_out:
            c = session.complete(prompt)
            print(json.dumps({"prompt_token_ids": c.prompt_ids, "token_ids": c.token_ids, "text": c.text, "finish_reason": c.finish_reason}, ensure_ascii=False))
        else:
            _print_stream(session.send(prompt))
            print()
        return
    from hearth.textsafe import terminal_safe  # the name is the weights file's own (GGUF general.name)

    print(f"hearth: chatting with {terminal_safe(lm.checkpoint.config.name)} ({lm.checkpoint.quantization}). /bye to quit, /clear to reset.", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return
        if text == "/clear":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        try:
            _print_stream(session.send(text))
        except HearthError as e:
            print(f"\nerror: {e}", file=sys.stderr)
        print()
        if session.dropped:
            print(f"(the conversation outgrew the context: its {session.dropped} oldest exchange(s) were dropped)",
                  file=sys.stderr)
