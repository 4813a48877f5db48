"""What `hearth guard eval` leaves in its output folder: report.json (every figure), report.md (the same as tables
for people), pr_curve.png (the guard and the baselines on one precision-recall plot) and scores.jsonl (each item's
label and each scorer's score, to recompute anything)."""

from __future__ import annotations

import json
from pathlib import Path

from hearth.fsutil import atomic_open, save_png
from hearth.guard.evaluate import EvalRun
from hearth.guard.taxonomy import BY_CODE

COLUMNS = ("precision", "recall", "f1", "fpr", "auprc")


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _metric_row(label: str, m: dict) -> list[str]:
    return [label, str(m["n"]), str(m["unsafe"]), *(fmt(m[c]) for c in COLUMNS)]


def markdown(report: dict) -> str:
    scorers = report["scorers"]
    pub = report["published"]
    out = [f"# Guard evaluation: {report['guard']}", "",
           f"Policy `{report['policy']}`, threshold {report['threshold']}: a text is flagged when its score "
           "(P(unsafe) for a model, 1 - 0.5^categories hit for the keyword filter) is at or above it. Unsafe is the "
           "positive class. Overall counts harmbench, overrefusal and guardmeter; bastion (prompt injection, not one "
           "of Llama Guard 3's S1-S14) is reported on its own line only.", "", "## Data", ""]
    rows = []
    for name, s in report["sources"].items():
        rows.append([name, str(s["safe"]), str(s["unsafe"]), str(s["skipped"]), str(s["duplicates"]),
                     str(s["excluded"]), "yes" if s["in_overall"] else "no", "; ".join(s["notes"]) or s["about"]])
    out += [_table(["source", "safe", "unsafe", "skipped", "duplicates", "excluded", "in overall", "notes"], rows), ""]
    ev, ov = report["evaluated"], report["overlap"]
    out += [f"Evaluated: {ev['items']} items ({ev['unsafe']} unsafe); {ev['out_of_policy']} unsafe items of categories "
            f"the policy does not check left out.", "",
            (f"Overlap with the training texts: {ov['eval_texts_in_training']} evaluation texts found among them "
             f"(normalized; any found are left out of the figures): {ov['note']}."
             if ov["eval_texts_in_training"] is not None else f"Overlap with the training texts {ov['note']}."),
            "", "## Overall", ""]
    rows = [_metric_row(s["name"], s["overall"]) for s in scorers]
    rows.append([f"{pub['model']} (published)", "—", "—", "—", "—", fmt(pub["f1"]), fmt(pub["fpr"]), "—"])
    out += [_table(["scorer", "items", "unsafe", *COLUMNS], rows), "",
            f"The {pub['model']} row: {pub['data']}.", "", "## Per source", ""]
    rows = [_metric_row(f"{src} · {s['name']}", m) for src in report["sources"] for s in scorers
            for m in [s["sources"].get(src)] if m]
    out += [_table(["source · scorer", "items", "unsafe", *COLUMNS], rows), "",
            "## Per category (recall on the unsafe items of each category, overall sources)", ""]
    codes = sorted({c for s in scorers for c in s["categories"]}, key=lambda c: int(c[1:]))
    rows = [[f"{c} {BY_CODE[c].name if c in BY_CODE else ''}".strip(),
             str(scorers[0]["categories"].get(c, {}).get("n", 0)),
             *(fmt(s["categories"].get(c, {}).get("recall")) for s in scorers)] for c in codes]
    out += [_table(["category", "items", *(s["name"] for s in scorers)], rows), "",
            "## Per source label (share flagged: recall on unsafe rows, false-positive rate on safe rows)", ""]
    labels = list(scorers[0]["labels"]) if scorers else []
    rows = [[k, str(scorers[0]["labels"][k]["n"]),
             *(fmt(s["labels"][k]["flagged"] / s["labels"][k]["n"]) for s in scorers)] for k in labels]
    out += [_table(["source:label:truth", "items", *(s["name"] for s in scorers)], rows), "",
            "## Categories named", "",
            "Of the unsafe items a scorer flagged and named categories for, the share where one of them is the item's "
            "own (mapped) category:", ""]
    rows = [[s["name"], str(s["category_match"]["named"]), fmt(s["category_match"]["rate"])] for s in scorers]
    out += [_table(["scorer", "flagged with codes", "right category"], rows), ""]
    return "\n".join(out)


def plot_pr(report: dict, path: Path) -> Path:
    """The overall precision-recall curves of every scorer on one plot, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; never opens a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for s in report["scorers"]:
        c = s["curve"]
        # each point's precision holds over the recall it added (average precision's rectangles): steps "pre"
        ax.step(c["recall"], c["precision"], where="pre", label=f"{s['name']} (AUPRC {fmt(s['overall']['auprc'])})")
    overall = report["scorers"][0]["overall"] if report["scorers"] else None
    if overall and overall["n"]:
        ax.axhline(overall["unsafe"] / overall["n"], color="grey", linestyle=":", label="no skill (share unsafe)")
    ax.set_xlabel("recall (unsafe)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"guard eval: {report['guard']}"[:80])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return save_png(fig, path)


def write_outputs(run: EvalRun, directory: Path) -> dict:
    """report.json, report.md, pr_curve.png, scores.jsonl into `directory` (made if absent); returns the report."""
    directory.mkdir(parents=True, exist_ok=True)
    report = run.report()
    with atomic_open(directory / "report.json", "w", durable=False, encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    with atomic_open(directory / "report.md", "w", durable=False, encoding="utf-8") as f:
        f.write(markdown(report))
    with atomic_open(directory / "scores.jsonl", "w", durable=False, encoding="utf-8") as f:
        for k, it in enumerate(run.items):
            rec = {"source": it.source, "label": it.label, "unsafe": it.unsafe, "categories": list(it.categories),
                   "text": it.text}
            for s in run.scored:
                rec[s.name] = {"score": round(s.scores[k], 6), "flagged": s.flagged[k], "categories": list(s.codes[k])}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    plot_pr(report, directory / "pr_curve.png")
    return report


def summary_rows(report: dict) -> list[list[str]]:
    """The overall line of each scorer and the injection source's, for the terminal."""
    rows = [["overall", s["name"], *(_metric_row("", s["overall"])[1:])] for s in report["scorers"]]
    rows += [["bastion", s["name"], *(_metric_row("", s["sources"]["bastion"])[1:])]
             for s in report["scorers"] if "bastion" in s["sources"]]
    pub = report["published"]
    rows.append(["published", "LG3-1B", "—", "—", "—", "—", fmt(pub["f1"]), fmt(pub["fpr"]), "—"])
    return rows
