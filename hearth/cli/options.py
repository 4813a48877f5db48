"""Option types shared by several commands, and the parsing of their values into library objects."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.errors import HearthError

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
Threads = Annotated[Optional[int], typer.Option(help="CPU threads for torch and hearth's native kernels (default: one per "
                                                  "core, less one for each core other processes keep busy, from the load "
                                                  "average at start; OMP_NUM_THREADS, if set, stands).", min=1)]


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


@dataclasses.dataclass(frozen=True)
class Switches:
    """The environment variables that change how hearth runs a model, read once here, at the program's edge, and
    passed on as parameters (README.md, "Environment variables"). Each is for debugging or comparison."""

    kernels: bool = True  # HEARTH_NO_KERNELS=1: no native CPU kernels (fused PyTorch modules, dequantized weights)
    triton: bool = True  # HEARTH_NO_TRITON=1: no Triton decode step on a GPU (torch ops in the CUDA graph)
    pdl: bool | None = None  # HEARTH_TRITON_PDL=0: the Triton kernels without programmatic dependent launch
    graphs: bool | None = None  # HEARTH_NO_CUDA_GRAPHS=1: `run` / `generate` decode on the plain per-layer path

    @classmethod
    def from_env(cls, env=None) -> Switches:
        env = os.environ if env is None else env
        return cls(kernels=env.get("HEARTH_NO_KERNELS") != "1", triton=env.get("HEARTH_NO_TRITON") != "1",
                   pdl=False if env.get("HEARTH_TRITON_PDL") == "0" else None,
                   graphs=False if env.get("HEARTH_NO_CUDA_GRAPHS") == "1" else None)

    def generator(self) -> dict:
        """Generator / ChatSession keyword arguments (hearth/engine/generate.py)."""
        return dict(graphs=self.graphs, triton=self.triton, pdl=self.pdl)


def apply_threads(n: int | None, env=None) -> int:
    """Set the CPU threads of this process (torch's intra-op pool, which hearth's native kernels and their OpenMP
    regions read through at::get_num_threads) and return how many. n: --threads; None: hearth.runtime.default_threads
    of the machine's load read now, never more than torch's own default; an OMP_NUM_THREADS the user set stands.
    Call it before loading: threads started later inherit it. Backing off is logged at INFO: serve and tune show it,
    a one-shot command does not, as its stderr holds its answer's notes or one `error:` line."""
    import torch

    from hearth.runtime import default_threads, machine_load

    env = os.environ if env is None else env
    if n is None:
        if env.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        most = torch.get_num_threads()
        cores, load, online = machine_load()
        n = min(most, default_threads(cores, load, online))
        if n < most:
            logging.getLogger("hearth").info("machine busy (load %.1f): using %d thread%s of %d; --threads to override",
                                             load, n, "" if n == 1 else "s", most)
    torch.set_num_threads(n)
    return n


def prepare_process(device: str) -> None:
    """Process-wide settings the library leaves to the program: on a CPU, freed prefill activations go back to the OS
    instead of staying in glibc's heap (hearth/runtime.py)."""
    from hearth.loader import resolve_device
    from hearth.runtime import return_large_frees

    try:
        cpu = resolve_device(device).type == "cpu"
    except HearthError:  # a bad device: the load that follows says so, in its place
        return
    if cpu:
        return_large_frees()


def load_model(model: str, device: str, dtype: str, adapter: Path | None = None, kv_cache: str = "auto"):
    from hearth.loader import load

    prepare_process(device)
    lm = load(model, device=device, dtype=dtype, progress=sys.stderr.isatty(), kv_cache=kv_cache,
              kernels=Switches.from_env().kernels)
    if adapter is not None and dtype == "auto":
        # the fast path (4-bit blocks, fused products, the native decode step) plus the adapter's update, unmerged,
        # as llama.cpp's --lora runs
        from hearth.engine.lora import ServedAdapters

        ServedAdapters.applied(lm.model, adapter, decoder=lm.decoder)
    elif adapter is not None:  # the exact path's plain projections wrapped as `hearth tune` trains them
        from hearth.tune.peft_io import load_adapter

        load_adapter(lm.model, adapter, dtype=lm.dtype)
    logging.getLogger("hearth").info("loaded %s from %s in %.2fs", lm.describe(), lm.origin or lm.checkpoint.path,
                                     lm.load_seconds)
    return lm


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """The options `generate` and `run` share, as their commands receive them (see `generation_options`)."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int | None
    stop: list[str] | None
    device: str
    dtype: str
    kv_cache: str
    json_out: bool
    json_schema: str | None
    grammar: str | None
    logit_bias: list[str] | None
    adapter: Path | None
    compile: bool
    threads: int | None = None

    def sampling_params(self):
        from hearth.engine.sampling import SamplingParams

        return SamplingParams(
            max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            min_p=self.min_p, repetition_penalty=self.repeat_penalty, seed=self.seed,
            stop=tuple(unescape(s) for s in self.stop or ()), structure=_structure(self.json_schema, self.grammar),
            logit_bias=_logit_bias(self.logit_bias),
        )

    def load(self, model: str):
        apply_threads(self.threads)
        return load_model(model, self.device, self.dtype, self.adapter, self.kv_cache)


# (name, option type, default) of each GenerationOptions field, in the order `--help` lists them; max_tokens' default
# is the command's own.
_GENERATION_OPTIONS = (
    ("max_tokens", MaxTokens, None), ("temperature", Temperature, 0.8), ("top_p", TopP, 0.95), ("top_k", TopK, 40),
    ("min_p", MinP, 0.05), ("repeat_penalty", RepeatPenalty, 1.0), ("seed", Seed, None), ("stop", Stop, None),
    ("device", Device, "cpu"), ("dtype", DType, "auto"), ("kv_cache", KVCacheType, "auto"), ("json_out", Json, False),
    ("json_schema", JsonSchema, None), ("grammar", Grammar, None), ("logit_bias", LogitBias, None),
    ("adapter", Adapter, None), ("compile", Compile, False), ("threads", Threads, None),
)


def generation_options(*, max_tokens: int):
    """Give a command the options `generate` and `run` share, after its own parameters; it receives them as one
    GenerationOptions in its parameter `opts`. typer reads the command's parameters from its signature, so the
    wrapper's signature is the command's own (less `opts`) followed by the shared options."""

    def wrap(command):
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "opts"]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                    default=max_tokens if name == "max_tokens" else default)
                  for name, kind, default in _GENERATION_OPTIONS]

        @functools.wraps(command)
        def with_options(**kwargs):
            opts = GenerationOptions(**{name: kwargs.pop(name) for name, _, _ in _GENERATION_OPTIONS})
            return command(**kwargs, opts=opts)

        params = own + shared
        with_options.__signature__ = inspect.Signature(params)
        with_options.__annotations__ = {p.name: p.annotation for p in params}
        return with_options

    return wrap

