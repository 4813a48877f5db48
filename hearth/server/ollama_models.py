"""What Ollama's API says about the served model (hearth/server/ollama.py): /api/tags, /api/ps and /api/show.

Ollama describes a model by its file (size, modification time, digest), `details` (format, family, parameter size,
quantization) and `model_info` (GGUF's metadata keys: `llama.context_length`, ...). Here they come from the checkpoint
the engine runs; the context length is the served one (--max-model-len), which is what a client may send. Names carry
Ollama's default tag: the served "smollm2" is listed as "smollm2:latest".
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hearth.server.common import ServerContext
from hearth.server.ollama_answer import rfc3339

NEVER = "9999-12-31T23:59:59Z"  # /api/ps expires_at: the model stays loaded while the server runs


def tag(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


class ModelInfo:
    """The served model and its adapters, described once."""

    def __init__(self, ctx: ServerContext):
        self.ctx = ctx
        self._weights: dict[str, Any] | None = None

    def weights(self) -> dict[str, Any]:
        if self._weights is None:  # once: the files do not change while they are served
            self._weights = _describe(self.ctx)
        return self._weights

    def entry(self, name: str) -> dict[str, Any]:
        """One model as /api/tags lists it."""
        w = self.weights()
        details = dict(w["details"])
        if name in self.ctx.adapters:
            details["parent_model"] = tag(self.ctx.model_name)
        return {"name": tag(name), "model": tag(name), "modified_at": w["modified_at"], "size": w["size"],
                "digest": w["digest"], "details": details}

    def running(self, name: str) -> dict[str, Any]:
        """One model as /api/ps lists it: loaded until the server stops."""
        entry = self.entry(name)
        entry.pop("modified_at")
        vram = entry["size"] if self.weights()["gpu"] else 0
        return {**entry, "expires_at": NEVER, "size_vram": vram, "context_length": self.ctx.engine.max_model_len}

    def show(self, name: str) -> dict[str, Any]:
        """/api/show: the details, model_info (GGUF's key names), the chat template (Jinja, not Ollama's Go)."""
        w, engine = self.weights(), self.ctx.engine
        n_ctx = engine.max_model_len
        template = getattr(getattr(engine, "chat_template", None), "source", "")
        out = {"modelfile": f"# served by hearth, which reads no Modelfile\nFROM {w['path']}\nPARAMETER num_ctx {n_ctx}\n",
               "parameters": f"num_ctx {n_ctx}", "template": template, "details": self.entry(name)["details"],
               "model_info": w["info"], "capabilities": ["completion", "tools"], "modified_at": w["modified_at"]}
        if w["license"]:
            out["license"] = w["license"]
        return out


def _describe(ctx: ServerContext) -> dict[str, Any]:
    """The served weights as Ollama describes a model (file, size, digest, details, model_info), from the checkpoint
    the engine runs. An engine without one (a test's) gets placeholders."""
    engine = ctx.engine
    ckpt = getattr(getattr(getattr(engine, "engine", None), "lm", None), "checkpoint", None)  # AsyncEngine → LLMEngine
    device = getattr(getattr(getattr(engine, "engine", None), "lm", None), "device", None)
    out: dict[str, Any] = {"path": ctx.model_name, "size": 0, "modified_at": rfc3339(datetime.now(timezone.utc)),
                           "gpu": getattr(device, "type", "cpu") == "cuda", "license": None,
                           "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                                       "parameter_size": "", "quantization_level": ""},
                           "info": {"general.architecture": "llama", "llama.context_length": engine.max_model_len}}
    if ckpt is None:
        out["digest"] = hashlib.sha256(ctx.model_name.encode()).hexdigest()
        return out
    from hearth.store.common import human_count

    path, cfg, meta = Path(ckpt.path), ckpt.config, ckpt.metadata
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    mtime = max((s.st_mtime for s in stats), default=0.0)
    arch = str(meta.get("general.architecture", "llama"))
    n_params = cfg.num_params()
    out.update(path=str(path), size=sum(s.st_size for s in stats), license=meta.get("general.license"),
               modified_at=rfc3339(datetime.fromtimestamp(mtime, timezone.utc)), digest=_digest(ctx, path, stats))
    out["details"].update(format="gguf" if ckpt.format == "gguf" else "safetensors", family=arch, families=[arch],
                          parameter_size=human_count(n_params), quantization_level=ckpt.quantization)
    out["info"] = {"general.architecture": arch, "general.name": meta.get("general.name", cfg.name),
                   "general.parameter_count": n_params, f"{arch}.context_length": engine.max_model_len,
                   f"{arch}.embedding_length": cfg.dim, f"{arch}.block_count": cfg.n_layers,
                   f"{arch}.feed_forward_length": cfg.hidden_dim, f"{arch}.attention.head_count": cfg.n_heads,
                   f"{arch}.attention.head_count_kv": cfg.n_kv_heads, f"{arch}.vocab_size": cfg.vocab_size,
                   f"{arch}.rope.freq_base": float(cfg.rope_theta)}
    return out


def _digest(ctx: ServerContext, path: Path, stats: list) -> str:
    """A store blob's name is its sha256; a captured model's digest is known (records); any other file is named by
    its path, size and time, not hashed (gigabytes are not read for a listing): a digest that changes with the file."""
    if path.name.startswith("sha256-"):
        return path.name.removeprefix("sha256-")
    known = getattr(ctx.records, "model_digest", None)
    if known:
        return known.removeprefix("sha256:")
    ident = f"{path}\0{sum(s.st_size for s in stats)}\0{max((s.st_mtime_ns for s in stats), default=0)}"
    return hashlib.sha256(ident.encode()).hexdigest()

