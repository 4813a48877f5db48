"""`eu/`: a skeleton of the EU AI Office's public summary of training content (its template's three sections:
general information, list of data sources, relevant data processing aspects), filled from the fine-tune's record,
with a copyright-policy stub for the provider to complete, and a compute ledger.

The ledger compares the fine-tune's compute with one third of the base model's training compute: the Commission's
guidelines for general-purpose AI models (July 2025) presume that whoever modifies a model with more than a third of
its original training compute becomes the provider of the modified model. Training compute is estimated as
6 x parameters x tokens (Kaplan et al., 2020), for the base from its published token count; a LoRA fine-tune
still runs the whole network forward and backward, so the same estimate bounds it from above.

These are drafts for a person to check, not legal advice: the files say so.
"""

from __future__ import annotations

import json
from pathlib import Path

# Published training token counts of base models hearth knows (name fragment -> (tokens, source))
BASE_TOKENS = {
    "smollm2-135m": (2e12, "SmolLM2 model card: 135M trained on 2 trillion tokens"),
    "smollm2-360m": (4e12, "SmolLM2 model card: 360M trained on 4 trillion tokens"),
    "smollm2-1.7b": (11e12, "SmolLM2 model card: 1.7B trained on 11 trillion tokens"),
    "llama-3.2-1b": (9e12, "Llama 3.2 model card: up to 9 trillion tokens"),
    "llama-3.2-3b": (9e12, "Llama 3.2 model card: up to 9 trillion tokens"),
    "llama-3.1-8b": (15e12, "Llama 3.1 model card: ~15 trillion tokens"),
}
DRAFT = ("Draft written by hearth from the release's records. The provider must check and complete it before "
         "publishing; it is not legal advice.")


def base_compute(name: str, params: int) -> tuple[float | None, str]:
    """`name`: every name the base is known by (its reference, the name its weights carry), space-separated."""
    key = name.lower().replace(" ", "-").replace("_", "-")
    for frag, (tokens, source) in BASE_TOKENS.items():
        if frag in key:
            return 6 * params * tokens, f"6 x {params:,} parameters x {tokens:.3g} tokens ({source})"
    return None, "unknown: the base model's training tokens are not published in a form hearth knows"


def ledger(base_name: str, params: int, tokens: int | None) -> dict:
    base, how = base_compute(base_name, params)
    tune = 6 * params * tokens if tokens else None
    third = base / 3 if base else None
    return {"fine_tune_flops": tune, "fine_tune_estimate": f"6 x {params:,} parameters x {tokens} tokens"
            if tokens else "no token count recorded", "base_training_flops": base, "base_estimate": how,
            "one_third_of_base": third,
            "over_one_third": (tune > third) if tune is not None and third is not None else None,
            "consequence": ("the modification stays under a third of the base's compute: its provider remains the "
                            "base model's provider for the model's general-purpose obligations; yours cover the "
                            "modification" if tune is not None and third is not None and tune <= third else
                            "over a third (or unknown): treat yourself as the provider of the modified model")}


def write_eu(folder: Path, name: str, base_name: str, params: int, lineage: dict | None, summary: dict | None,
             known_as: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    lin, summ = lineage or {}, summary or {}
    data = lin.get("data") or []
    led = ledger(f"{base_name} {known_as}", params, summ.get("tokens") or lin.get("tokens"))
    summary_md = [
        f"# Public summary of training content: {name}", "", f"_{DRAFT}_", "",
        "## 1. General information", "",
        f"- Model: {name}, a modification of {base_name} (whose own summary covers its pre-training data).",
        f"- Modality: text. Training finished: {lin.get('finished', 'not recorded')}.",
        f"- Size of the fine-tuning data: {sum(d.get('rows', 0) for d in data)} records in {len(data)} files; "
        f"{summ.get('tokens', 'unknown')} tokens.", "",
        "## 2. List of data sources", "",
        *([f"- `{d['path']}` ({d['rows']} records, sha256 {d['sha256']}): the provider's own data; state its origin, "
           "the rights held to it, and whether it holds personal data." for d in data] or
          ["- No fine-tuning data recorded."]),
        "- Publicly available datasets: none recorded. Data scraped from the web: none by hearth (it runs offline).",
        "", "## 3. Relevant data processing aspects", "",
        "- Respect of reservations of rights (text and data mining opt-outs): see copyright_policy.md.",
        "- Removal of illegal content and personal data: describe the filters applied before training.", "",
    ]
    copyright_md = [f"# Copyright policy: {name}", "", f"_{DRAFT}_", "",
                    "- Who is responsible for copyright compliance of training data: (name, contact).",
                    "- How machine-readable reservations of rights (robots.txt, TDM opt-outs) are honoured: (describe).",
                    "- How complaints from rightholders are received and handled: (address, process).", ""]
    paths = [folder / "training_content_summary.md", folder / "copyright_policy.md", folder / "compute_ledger.json"]
    paths[0].write_text("\n".join(summary_md), encoding="utf-8")
    paths[1].write_text("\n".join(copyright_md), encoding="utf-8")
    paths[2].write_text(json.dumps({"note": DRAFT, **led}, indent=1) + "\n", encoding="utf-8")
    return paths
