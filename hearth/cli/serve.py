"""`hearth serve`: parse the options, build the engine and the app, hand them to hearth.server.launch."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.cli.options import Device, DType, KVCacheType, Switches, Threads, apply_threads, load_model
from hearth.errors import HearthError



def _served_adapters(items: list[str] | None, model_names: tuple[str, ...]) -> dict[str, str]:
    """serve --adapter NAME=DIR | DIR  ->  {name: directory}, names unique and not the model's."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, directory = item.partition("=")
        if not sep:
            name, directory = Path(item.rstrip("/")).name.removesuffix(".gguf"), item
        name, directory = name.strip(), directory.strip()
        if not name or not directory:
            raise HearthError(f"--adapter {item!r}: expected NAME=DIR (a PEFT LoRA adapter directory)")
        if name in model_names or name in out:
            raise HearthError(f"--adapter {item!r}: the name {name!r} is already taken; give each adapter its own NAME=DIR")
        if not (Path(directory).is_dir() or (directory.endswith(".gguf") and Path(directory).is_file())):
            raise HearthError(f"--adapter {item!r}: {directory} is not a directory (expected a PEFT LoRA adapter) "
                              "or a GGUF adapter file")
        out[name] = directory
    return out


def _guard_plan(ref: str | None, policy: Path | None, holdback: int):
    """--guard, --guard-policy, --guard-holdback checked (the policy read, the guard's model found), or None."""
    from hearth.server.guard_plan import GuardPlan

    if ref is None:
        if policy is not None:
            raise HearthError("--guard-policy needs --guard (default, a guard adapter directory or a guard model)")
        return None
    return GuardPlan.make(ref, policy, holdback)


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


def _response_store():
    """The Responses API's store, $HEARTH_HOME/responses.sqlite (hearth.records.responses_store)."""
    from hearth.records.responses_store import ResponseStore
    from hearth.store.common import default_home

    return ResponseStore(default_home() / "responses.sqlite")


def serve(
    model: Annotated[str, typer.Argument(help="A store name (hearth list), a .gguf file, a HF model directory, or 'smollm2'.")] = "smollm2",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).", min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option(metavar="KEY", help="Require 'Authorization: Bearer KEY' on every route but /health. Visible to every user of the machine in the process list (ps) and kept in shell history: prefer --api-key-file or the HEARTH_API_KEY environment variable.")] = None,
    api_key_file: Annotated[Optional[Path], typer.Option(metavar="PATH", help="Read the API key from this file (its first line), so that it stays out of the process list.")] = None,
    allowed_host: Annotated[Optional[list[str]], typer.Option(metavar="NAME", help="Also answer requests whose Host header is NAME (e.g. the name a reverse proxy forwards; '*.example.com' for its subdomains). Repeatable. By default: IP addresses, localhost, the bound host and, bound to 0.0.0.0, this machine's names; any other name is refused (DNS rebinding). '*': any Host.")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(metavar="ORIGIN", help="Let web pages from ORIGIN (e.g. https://app.example.com) call the API from a browser (CORS). Repeatable; off by default.")] = None,
    public_metrics: Annotated[bool, typer.Option("--public-metrics", help="With an API key: leave /metrics, /openapi.json and /docs open (Prometheus scrapers, browsers).")] = False,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Serve the web page: chat for people at / and the operator's dashboard at /dashboard (static files that call the API like any client; with an API key they ask for it).")] = True,
    shutdown_timeout: Annotated[float, typer.Option(help="On SIGTERM: seconds running requests may take to finish (new ones get 503) before the rest are ended with an error event.", min=0.0)] = 10.0,
    served_model_name: Annotated[Optional[list[str]], typer.Option(metavar="NAME", help="The model name clients ask for (vLLM's option; default: the store name, or a file's name without .gguf: model.gguf is 'model'). Repeatable: later names are aliases.")] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log one line per request (method, path, status, time, token counts, client; never content).")] = True,
    threads: Threads = None,
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
    guard: Annotated[Optional[str], typer.Option(metavar="default|NAME|PATH", help="Check prompts and answers with a safety guard (Llama Guard format): 'default' (hearth's own, an adapter of SmolLM2), a guard adapter directory (`hearth guard train -o DIR`), or a whole guard model (e.g. Llama Guard 3 1B). Blocked prompts and answers end with finish_reason content_filter; also serves POST /v1/moderations. An adapter of the served model's own weights runs on the same engine.")] = None,
    guard_policy: Annotated[Optional[Path], typer.Option(metavar="FILE", help="The guard's content policy (TOML or YAML): categories, block/flag/allow per category, input/output/both, threshold, refusal text. Default: Llama Guard 3's 14 categories, all blocked, both checked.")] = None,
    guard_holdback: Annotated[int, typer.Option(metavar="N", help="Characters of a streamed answer held back until the guard has checked them (each time N wait, and at the end), so a flagged part is never sent.", min=0)] = 256,
    capture: Annotated[bool, typer.Option("--capture", help="Keep chat completions sent with store: true (OpenAI's stored completions: GET /v1/chat/completions, feedback at POST /v1/feedback) in $HEARTH_HOME/capture.sqlite (or --capture-db). Personal data is redacted before anything is written.")] = False,
    capture_db: Annotated[Optional[Path], typer.Option(metavar="DB", help="The capture's SQLite file (implies --capture).")] = None,
    capture_all: Annotated[bool, typer.Option("--capture-all", help="With --capture: keep every chat completion, not only those sent with store: true.")] = False,
    redact: Annotated[bool, typer.Option("--redact/--no-redact", help="With --capture: replace e-mail addresses, phone and card numbers, IBANs, national ids and IP addresses with typed placeholders before storing.")] = True,
    capture_days: Annotated[Optional[float], typer.Option(metavar="N", help="With --capture: delete captured completions older than N days (checked at start and every 10 minutes).", min=0.0)] = None,
    ledger: Annotated[bool, typer.Option("--ledger/--no-ledger", help="Keep running totals per model, adapter and API key (requests, tokens, busy time, energy) in $HEARTH_HOME/ledger.sqlite: `hearth cost` reads them.")] = True,
    watts_per_core: Annotated[Optional[float], typer.Option(metavar="W", help="Where no energy counter is readable (RAPL, NVML): estimate energy as CPU time x W watts per core, marked as an estimate.", min=0.0)] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse request fields hearth does not know (a 400 naming the field). By default they are ignored, logged and named in a Warning header, as are the newer OpenAI, vLLM and llama.cpp fields hearth cannot honour (docs/CLIENTS.md lists them).")] = False,
    strict_model_names: Annotated[bool, typer.Option("--strict-model-names", help="Answer a request naming another model with 404. By default the one served model answers whatever name a client sends (llama.cpp's way; each new name is logged once).")] = False,
    store_responses: Annotated[bool, typer.Option("--store-responses/--no-store-responses", help="Keep /v1/responses answers sent with store: true (OpenAI's default) in $HEARTH_HOME/responses.sqlite, unredacted: GET /v1/responses/{id} and previous_response_id read them.")] = True,
    audit: Annotated[bool, typer.Option("--audit/--no-audit", help="Append each request (time, key id, model, endpoint, status, tokens, guard decision; no content) to the hash-chained log $HEARTH_HOME/audit/audit.jsonl: `hearth audit verify` checks it.")] = True,
):
    """Serve MODEL over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, ...).

    Example: hearth serve smollm2 --port 8000, then point an OpenAI client at http://127.0.0.1:8000/v1
    """
    from hearth.engine.async_engine import AsyncEngine, EngineConfig
    from hearth.engine.grammar_limits import StructureLimits
    from hearth.server.app import build_app
    from hearth.server.launch import listen
    from hearth.server.launch import serve as run_server
    from hearth.server.security import allowed_hosts_for

    log = logging.getLogger("hearth")
    log.setLevel(logging.INFO)
    logging.getLogger("hearth.access").setLevel(logging.INFO if access_log else logging.WARNING)
    key = _api_key(api_key, api_key_file, os.environ.get("HEARTH_API_KEY"), log)
    aliases = tuple(dict.fromkeys(n.strip() for n in served_model_name or ()))
    if any(not n for n in aliases):
        raise HearthError("--served-model-name is empty; give the name clients will ask for")
    _served_adapters(adapter, aliases)  # bad adapters fail before the port is taken and the model loaded
    plan = _guard_plan(guard, guard_policy, guard_holdback)  # so does a bad guard or policy
    from hearth.cli.serve_records import RecordOptions, build_records, model_digest

    where = str(capture_db) if capture_db is not None else "default" if capture else None
    records = build_records(RecordOptions(where, capture_all, redact, capture_days, ledger, audit, watts_per_core),
                            device)  # and a capture file or audit log that cannot be used
    try:
        sock = listen(host, port)  # before loading the model, so a port in use fails at once
    except BaseException:
        if records is not None:
            records.close()
        raise
    try:
        apply_threads(threads)
        lm = load_model(model, device, dtype, kv_cache=kv_cache)
        names = aliases or (lm.display_name,)
        name = names[0]
        adapters = _served_adapters(adapter, names)
        shared = plan is not None and plan.shares(lm)
        if shared:
            if plan.adapter_name in adapters:
                raise HearthError(f"--adapter: the name {plan.adapter_name!r} is the guard's; "
                                  "give that adapter another")
            adapters[plan.adapter_name] = str(plan.source.adapter)
        switches = Switches.from_env()
        config = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_batched_tokens,
                              max_waiting=max_waiting, max_prefill_with_decodes=max_prefill_with_decodes,
                              enable_prefix_caching=prefix_caching, kv_cache_bytes=int(kv_cache_gib * (1 << 30)),
                              adapters=adapters, structure_limits=StructureLimits(compile_seconds=structure_timeout),
                              triton=switches.triton, triton_pdl=switches.pdl)
        engine = AsyncEngine(lm, config, model_name=name)
        server_guard, beside = None, ()
        if plan is not None:
            if shared:
                server_guard = plan.build(engine)
            else:  # the guard's model loaded beside the served one, in an engine of its own
                guard_engine = AsyncEngine(load_model(plan.source.base, device, dtype, kv_cache=kv_cache),
                                           plan.engine_config(config), model_name="guard")
                server_guard, beside = plan.build(guard_engine), (guard_engine,)
            log.info("guard: %s", plan.describe(shared))
        if records is not None and records.capture is not None:
            records.model_digest = model_digest(lm)
        responses = _response_store() if store_responses else None
        web = build_app(engine, api_key=key, served_model_name=names, max_body_bytes=max_body_bytes,
                        allowed_hosts=allowed_hosts_for(host, allowed_host or ()),
                        cors_origins=tuple(cors_origin or ()), public_metrics=public_metrics, ui=ui, guard=server_guard,
                        records=records, strict=strict, strict_model_names=strict_model_names, responses=responses)
    except BaseException:
        sock.close()
        if records is not None:
            records.close()
        raise
    try:
        run_server(web, engine, sock, host=host, model_name=name, shutdown_timeout=shutdown_timeout, beside=beside)
    finally:
        if records is not None:
            records.close()
        if responses is not None:
            responses.close()
