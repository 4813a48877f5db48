"""Read a Hugging Face model directory: config.json + (sharded) safetensors + tokenizer files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hearth.config import ModelConfig, RopeScaling
from hearth import safejson
from hearth.errors import ModelFormatError
from hearth.weights import limits
from hearth.weights.names import HF_IGNORED, hf_to_hearth
from hearth.weights.types import Checkpoint, TokenizerData

SUPPORTED_MODEL_TYPES = ("llama", "mistral")


# Size and nesting limits for the JSON files of a model directory: far above real ones (Llama 3's tokenizer.json
# is 9 MB, a config.json a few KB, nesting under 10 levels), far below what exhausts memory or the stack.
JSON_LIMITS = {"tokenizer.json": 256 << 20, "tokenizer_config.json": 64 << 20, "model.safetensors.index.json": 64 << 20}
JSON_DEFAULT_BYTES = 4 << 20
JSON_MAX_DEPTH = 64


def _read_json(path: Path, kind: type = dict) -> Any:
    try:
        doc = safejson.read(path, max_depth=JSON_MAX_DEPTH, max_bytes=JSON_LIMITS.get(path.name, JSON_DEFAULT_BYTES))
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e.strerror}") from None
    except safejson.JSONLimitError as e:
        raise ModelFormatError(f"{path}: {e}; the file is corrupt or not a model file") from None
    except ValueError as e:  # invalid JSON, UTF-8 or an integer of thousands of digits
        raise ModelFormatError(f"{path} is not valid JSON ({str(e)[:200]}); restore the file from the original model") from None
    if not isinstance(doc, kind):
        raise ModelFormatError(f"{path} holds a JSON {type(doc).__name__} where an object belongs; restore the file from the original model")
    return doc


def _rope_scaling(path: Path, cfg: dict[str, Any]) -> RopeScaling | None:
    # transformers 4.x writes rope_theta + rope_scaling; 5.x writes one rope_parameters dict.
    key = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    rs = cfg.get(key) or None
    if rs is None:
        return None
    where = f"{path}/config.json"
    if not isinstance(rs, dict):
        raise ModelFormatError(f"{where}: {key} is {limits.show(rs)}, not an object; restore it from the original model")
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return None

    def num(name: str, default: Any = None) -> float:
        v = rs.get(name, default)
        if v is None:
            raise ModelFormatError(f"{where}: {key} of type {limits.show(kind)} lacks {name!r}; restore it from the original model")
        return limits.as_float(where, f"{key}.{name}", v)

    if kind == "llama3":
        return RopeScaling(
            kind="llama3", factor=num("factor"), low_freq_factor=num("low_freq_factor", 1.0),
            high_freq_factor=num("high_freq_factor", 4.0),
            original_max_position_embeddings=limits.as_int(where, f"{key}.original_max_position_embeddings",
                                                           rs.get("original_max_position_embeddings", 8192)),
        )
    if kind == "linear":
        return RopeScaling(kind="linear", factor=num("factor"))
    raise ModelFormatError(f"{path}: rope_scaling type {limits.show(kind)} is not supported (llama3, linear)")


def config_from_hf(path: Path, cfg: dict[str, Any]) -> ModelConfig:
    mtype = cfg.get("model_type")
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise ModelFormatError(
            f"{path}: model_type {limits.show(mtype)} is not supported; hearth runs Llama-family models ({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    scaling = _rope_scaling(path, cfg)
    where = f"{path}/config.json"

    def need(key: str) -> Any:
        if cfg.get(key) is None:
            raise ModelFormatError(f"{where} lacks {key!r}; restore it from the original model")
        return cfg[key]

    def i(key: str, default: Any = None) -> int:
        return limits.as_int(where, key, need(key) if default is None else (cfg.get(key) or default))

    n_heads = i("num_attention_heads")
    dim = i("hidden_size")
    if n_heads <= 0:
        raise ModelFormatError(f"{where}: num_attention_heads = {n_heads} must be positive; restore it from the original model")
    max_len = i("max_position_embeddings", 2048)
    if cfg.get("sliding_window"):  # Mistral: attention beyond the window is not implemented; never exceed it
        max_len = min(max_len, i("sliding_window"))
    rp = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    try:
        return ModelConfig(
            vocab_size=i("vocab_size"),
            dim=dim,
            n_layers=i("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=i("num_key_value_heads", n_heads),
            hidden_dim=i("intermediate_size"),
            head_dim=i("head_dim", dim // n_heads),
            norm_eps=limits.as_float(where, "rms_norm_eps", cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=limits.as_float(where, "rope_theta", cfg.get("rope_theta", rp.get("rope_theta", 10000.0))),
            rope_scaling=scaling,
            max_seq_len=max_len,
            tie_embeddings=limits.as_bool(where, "tie_word_embeddings", cfg.get("tie_word_embeddings", False)),
            name=path.name,
        )
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"{where} has a bad value: {e}") from None


HF_KEYS = {
    "n_layers": "num_hidden_layers", "dim": "hidden_size", "hidden_dim": "intermediate_size",
    "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
    "vocab_size": "vocab_size", "max_seq_len": "max_position_embeddings",
}


def _shard_path(path: Path, name: Any, index: Path) -> Path:
    """The shard `name` from the index, refused unless it lies inside the model directory: no absolute path, no
    `..`, no directory or symlink leading out. A shard may be a symlink into the directory, or into `../../blobs`:
    the layout of Hugging Face's hub cache (snapshots/<rev>/* link to the entry's blobs/*) and of hearth's store
    (models/<name>/* link to blobs/*). A symlink anywhere else (/etc/..., ~/.ssh/...) would be read, and by
    `hearth pull` copied into the store and its bundles."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ModelFormatError(f"{index}: a shard name is {limits.show(name)}, not a file name; restore the index")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise ModelFormatError(f"{index}: shard {name!r} lies outside the model directory; refusing to read it")
    if not inside_model_dir(path, path / rel):
        raise ModelFormatError(f"{index}: shard {name!r} resolves outside the model directory "
                               f"({(path / rel).resolve()}); refusing to read it")
    return path / rel


def inside_model_dir(path: Path, f: Path) -> bool:
    """Whether file `f` of model directory `path` really lies inside it: resolved into the directory, or a link into
    `../../blobs` (the hub cache's and hearth's store's layout; see `_shard_path`)."""
    root = path.resolve()
    allowed = [root, root.parent.parent / "blobs"]  # not resolved: a blobs/ that is itself a link out does not count
    return any(f.resolve().is_relative_to(a) for a in allowed) and f.parent.resolve().is_relative_to(root)


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.exists():
        wmap = _read_json(index).get("weight_map", {})
        if not isinstance(wmap, dict):
            raise ModelFormatError(f"{index}: weight_map is {limits.show(wmap)}, not an object; restore it from the original model")
        files = sorted({_shard_path(path, f, index) for f in wmap.values()})
        if not files:
            raise ModelFormatError(f"{index} lists no weight files; restore it from the original model")
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise ModelFormatError(f"{path}: shard {missing[0].relative_to(path)} listed in the index is missing; copy all shards")
        return files
    if single.exists():
        return [_shard_path(path, single.name, path)]  # a symlink out of the directory is refused here too
    raise ModelFormatError(
        f"{path} has no model.safetensors or model.safetensors.index.json; hearth reads safetensors weights only"
    )


MAX_TEMPLATE_BYTES = 4 << 20


def _template(path: Path, tc: dict[str, Any]) -> str | None:
    template = tc.get("chat_template")
    jinja = path / "chat_template.jinja"
    if jinja.exists():
        try:
            if jinja.stat().st_size > MAX_TEMPLATE_BYTES:
                raise ModelFormatError(f"{jinja} is larger than {MAX_TEMPLATE_BYTES} bytes; that is not a chat template")
            template = jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"cannot read {jinja} ({e}); restore it from the original model") from None
    if isinstance(template, list):  # named templates: use the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    if template is not None and not isinstance(template, str):
        raise ModelFormatError(f"{path}/tokenizer_config.json: chat_template is {limits.show(template)}, not a string; "
                               "restore it from the original model")
    return template


def _tokenizer_from_dir(path: Path, cfg: dict[str, Any]) -> TokenizerData:
    tj = path / "tokenizer.json"
    if not tj.exists():
        raise ModelFormatError(f"{path} has no tokenizer.json; copy it from the original model")
    tc = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").exists() else {}
    gen = _read_json(path / "generation_config.json") if (path / "generation_config.json").exists() else {}
    template = _template(path, tc)
    vocab = _read_json(tj)  # checked here for size and depth; the tokenizers library parses it again
    added = vocab.get("added_tokens") or []
    if not isinstance(added, list) or not all(
        isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int) for t in added
    ):
        raise ModelFormatError(f"{tj}: added_tokens is not a list of {{content, id}} entries; restore it from the original model")
    token_ids = {t["content"]: t["id"] for t in added}

    def tok_text(k: str) -> str | None:
        v = tc.get(k)
        v = v.get("content") if isinstance(v, dict) else v
        if v is not None and not isinstance(v, str):
            raise ModelFormatError(f"{path}/tokenizer_config.json: {k} is {limits.show(v)}, not a string; restore it")
        return v

    special = {k: tok_text(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if tc.get(k)}

    def tok_id(name: str, key: str) -> list[int]:
        ids = gen.get(key, cfg.get(key))
        if ids is None and special.get(name) in token_ids:
            ids = token_ids[special[name]]
        if ids is None:
            return []
        ids = ids if isinstance(ids, list) else [ids]
        if len(ids) > 1024:
            raise ModelFormatError(f"{path}: {key} lists {len(ids)} ids; restore it from the original model")
        return [limits.as_int(str(path), key, i) for i in ids]

    bos = tok_id("bos_token", "bos_token_id")
    eos = tok_id("eos_token", "eos_token_id")
    if special.get("eos_token") in token_ids:
        eos.append(token_ids[special["eos_token"]])
    pad = tok_id("pad_token", "pad_token_id")
    add_bos = tc.get("add_bos_token")
    return TokenizerData(
        tokenizer_json=tj,
        bos_id=bos[0] if bos else None,
        eos_ids=tuple(dict.fromkeys(eos)),
        pad_id=pad[0] if pad else None,
        add_bos=None if add_bos is None else limits.as_bool(f"{path}/tokenizer_config.json", "add_bos_token", add_bos),
        add_eos=limits.as_bool(f"{path}/tokenizer_config.json", "add_eos_token", tc.get("add_eos_token", False)),
        chat_template=template,
        special_tokens={k: v for k, v in special.items() if v},
    )


def read_hf(path: Path) -> Checkpoint:
    """Open a HF model directory. Safetensors files are memory-mapped; tensors load lazily."""
    from safetensors import safe_open

    if not (path / "config.json").exists():
        raise ModelFormatError(f"{path} has no config.json; pass a GGUF file or a Hugging Face model directory")
    raw = _read_json(path / "config.json")
    config = config_from_hf(path, raw)
    tensors, types = {}, {}
    files = _weight_files(path)
    n_keys = 0
    for f in files:
        try:
            handle = safe_open(str(f), framework="pt")
            keys = list(handle.keys())
        except Exception as e:
            raise ModelFormatError(f"{f} is not a readable safetensors file ({e}); re-download it") from None
        n_keys += len(keys)
        for key in keys:
            if HF_IGNORED.match(key):
                continue
            hname = hf_to_hearth(key)
            if hname is None:
                raise ModelFormatError(f"{f}: unexpected tensor {key!r}; this is not a plain Llama model")
            tensors[hname] = lambda h=handle, k=key: h.get_tensor(k)
            types[hname] = str(handle.get_slice(key).get_dtype())
    if config.tie_embeddings:
        tensors.pop("output.weight", None)
    elif "output.weight" not in tensors and "tok_embeddings.weight" in tensors:
        # Some checkpoints omit lm_head although config says untied: they mean tied.
        import dataclasses

        config = dataclasses.replace(config, tie_embeddings=True)
    limits.check_config(path / "config.json", config, HF_KEYS, file_bytes=sum(f.stat().st_size for f in files), n_tensors=n_keys)
    return Checkpoint(
        path=path, format="hf", config=config, tensors=tensors,
        tokenizer=_tokenizer_from_dir(path, raw), metadata={"hf_config": raw}, tensor_types=types,
    )
