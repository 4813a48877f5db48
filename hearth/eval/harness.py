"""Running lm-evaluation-harness against `hearth serve`, offline.

lm-eval's `local-completions` needs a tokenizer on the client side for loglikelihood requests (it
asserts one: with tokenizer_backend=None it cannot score). Two offline choices:

  * tokenizer_backend="huggingface", tokenizer=DIR: `write_tokenizer` writes the model's own
    tokenizer as a Hugging Face directory (tokenizer.json + tokenizer_config.json), so nothing is
    downloaded; the client then sends token-id prompts;
  * tokenizer_backend="remote" (what "auto" picks when the server answers /tokenizer_info and
    /tokenize): the client asks the server to tokenize, then still sends token-id prompts.

Either way each request is POST /v1/completions with
    {"model", "prompt": [[ids...]], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed", "echo": true}
and the loglikelihood is sum(token_logprobs[ctxlen:-1]).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def write_tokenizer(tokenizer, directory: str | Path) -> Path:
    """Write a hearth Tokenizer as a HF tokenizer directory that AutoTokenizer loads offline."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.backend.save(str(out / "tokenizer.json"))
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(tokenizer.add_bos),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    for key, idx in (
        ("bos_token", tokenizer.bos_id),
        ("eos_token", tokenizer.eos_ids[0] if tokenizer.eos_ids else None),
        ("pad_token", tokenizer.pad_id),
    ):
        text = tokenizer.special_tokens.get(key)
        if text is None and idx is not None:
            text = tokenizer.token_text(idx)
        if text:
            cfg[key] = text
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """HF_HUB_OFFLINE, HF_DATASETS_OFFLINE and TRANSFORMERS_OFFLINE set for the block, restored after.

    The libraries read some of these at import time: set them before lm_eval, datasets and
    transformers are first imported for the strongest guarantee.
    """
    saved = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_lm_eval(
    base_url: str,
    task_dir: str | Path,
    task_name: str,
    limit: int | None,
    model: str = "smollm2",
    tokenizer_backend: str = "huggingface",
    tokenizer: str | Path | None = None,
    num_concurrent: int = 1,
    max_retries: int = 1,
    log_samples: bool = True,
    **model_args: Any,
) -> dict[str, Any]:
    """lm_eval.simple_evaluate with `local-completions` on the task in `task_dir`; returns its results dict.

    `tokenizer_backend`: "huggingface" with `tokenizer` a directory from `write_tokenizer`, or
    "remote"/"auto" to tokenize through the server's /tokenize route. None cannot score
    loglikelihoods (lm-eval needs token counts to split context from continuation).
    """
    args: dict[str, Any] = {
        "base_url": base_url,
        "model": model,
        "tokenizer_backend": tokenizer_backend,
        "num_concurrent": num_concurrent,
        "max_retries": max_retries,
        "tokenized_requests": True,
        **model_args,
    }
    if tokenizer is not None:
        args["tokenizer"] = str(tokenizer)
    with offline():
        import lm_eval
        from lm_eval.tasks import TaskManager

        tm = TaskManager(include_path=str(task_dir), include_defaults=False)
        return lm_eval.simple_evaluate(
            model="local-completions",
            model_args=args,
            tasks=[task_name],
            task_manager=tm,
            limit=limit,
            log_samples=log_samples,
            bootstrap_iters=0,
        )
