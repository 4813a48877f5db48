"""What travels with a model's weights, and which licence it is: texts, model card, config, GGUF metadata.

A licence check must see what a recipient of the weights would see, wherever the model lies: a GGUF file (its
metadata; the header only, never the tensors), a Hugging Face directory (LICENSE*, USE_POLICY*, NOTICE*, README.md
front matter, config.json), a store name (the manifest's licence, card and params layers, without hashing gigabytes
of weights) or a path into the store (a GGUF blob is matched back to its manifest). Every text is read capped.
The licence is then named from the texts' distinctive clauses (titles, release-date and Notice lines, "Built with")
and from the declared ids, as hearth's id, an SPDX expression (license-expression) and a ScanCode key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth.errors import HearthError
from hearth.store import license as lic

MAX_TEXT = 1 << 20  # a licence, card or config read for detection: at most 1 MiB of it


@dataclass
class Carried:
    source: str
    meta: dict[str, Any] = field(default_factory=dict)      # GGUF metadata (scalars)
    tensors: set[str] = field(default_factory=set)          # GGUF tensor names
    config: dict[str, Any] = field(default_factory=dict)    # config.json
    readme: str = ""
    texts: dict[str, str] = field(default_factory=dict)     # LICENSE / USE_POLICY / NOTICE ... as found
    stored: Any = None                                      # the store manifest's LicenseInfo, if any


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(MAX_TEXT).decode("utf-8", "replace")


def _json(text: str) -> dict:
    try:
        v = json.loads(text)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _gguf(path: Path, carried: Carried) -> None:
    from hearth.weights.gguf_file import GGUFFile

    f = GGUFFile(path)
    carried.meta = {k: v for k, v in f.metadata.items() if isinstance(v, (str, int, float, bool))}
    carried.tensors = set(f.tensors)


def _hf(d: Path, carried: Carried) -> None:
    if (d / "config.json").is_file():
        carried.config = _json(_read(d / "config.json"))
    if (d / "README.md").is_file():
        carried.readme = _read(d / "README.md")
    carried.texts = {p.name: _read(p) for p in lic.hf_license_files(d)}


def _from_store(store, m, carried: Carried) -> None:
    carried.stored = m.license
    for layer in m.layers:
        if layer.size > MAX_TEXT or layer.kind not in ("license", "card", "params"):
            continue
        text = store.read_layer(layer).decode("utf-8", "replace")
        if layer.kind == "license":
            if layer.filename or "did not ship" not in text:  # hearth's own note on an id-only licence is no text
                carried.texts[layer.filename or "LICENSE"] = text
        elif layer.kind == "card":
            carried.readme = text
        elif layer.filename == "config.json":
            carried.config = _json(text)
        elif layer.filename is None and not carried.meta:
            carried.meta = _json(text)  # a GGUF's scalar metadata


def gather(ref: str) -> Carried:
    """What travels with the model `ref`: a store name, a packaged name, a GGUF file, a HF directory, a store path."""
    from hearth.store import Store
    from hearth.store.manifest import check_name

    store = Store()
    try:
        stored = store.exists(check_name(ref))
    except HearthError:
        stored = False
    if stored:
        m = store.get(ref)
        carried = Carried(f"the store's {ref}")
        _from_store(store, m, carried)
        blob = store.blobs.path(m.weights.digest)
        if m.format == "gguf" and blob.is_file():
            _gguf(blob, carried)
        return carried
    from hearth.loader import resolve_named

    path = resolve_named(ref).path
    if not path.exists():
        raise HearthError(f"model not found: {ref} (a store name from `hearth list`, a .gguf file or a model directory)")
    carried = Carried(str(path))
    if path.is_dir():
        _hf(path, carried)
        return carried
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise HearthError(f"cannot read {path}: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise HearthError(f"{path} is neither a GGUF file nor a model directory; pass the model itself")
    _gguf(path, carried)
    if path.parent.resolve() == store.blobs.dir.resolve():  # a store blob: its manifest holds the licence layers
        good, _ = store.all()
        m = next((m for m in good if store.blobs.path(m.weights.digest).resolve() == path.resolve()), None)
        if m is not None:
            _from_store(store, m, carried)
    return carried


def declared(c: Carried) -> list[tuple[str, str]]:
    """(where, value) of every licence id, name or link the model declares."""
    fm = lic.front_matter(c.readme) if c.readme else {}
    out = [(f"GGUF {k}", c.meta[k]) for k in ("general.license", "general.license.name", "general.license.link")
           if isinstance(c.meta.get(k), str) and c.meta[k].strip()]
    out += [(f"README.md front matter {k}", fm[k]) for k in ("license", "license_name", "license_link")
            if isinstance(fm.get(k), str) and fm[k].strip()]
    if c.stored is not None and c.stored.id:
        out.append((f"the store's manifest ({c.stored.source})", c.stored.id))
    return out


_VISION_ARCH = re.compile(r"(mllama|llama4|llava|vision|vl)\w*ForConditionalGeneration", re.IGNORECASE)


def multimodal(c: Carried, evidence: list[str]) -> bool | None:
    """Whether the weights are a multimodal (vision) model, from config.json or GGUF metadata; None: cannot tell."""
    archs = [a for a in c.config.get("architectures") or [] if isinstance(a, str)]
    vision = [a for a in archs if _VISION_ARCH.search(a)]
    if vision or "vision_config" in c.config or c.config.get("model_type") in ("mllama", "llama4", "llava"):
        evidence.append(f"multimodal: yes (config.json: {', '.join(vision) or 'vision_config'})")
        return True
    arch = c.meta.get("general.architecture")
    mm_keys = [k for k in c.meta if k.startswith("clip.") or ".vision." in k]
    mm_tensors = sorted(t for t in c.tensors if t.startswith(("v.", "mm.", "vision_")))
    if arch in ("mllama", "llama4", "clip") or mm_keys or mm_tensors:
        why = f"general.architecture {arch}" if arch in ("mllama", "llama4", "clip") else (mm_keys or mm_tensors)[0]
        evidence.append(f"multimodal: yes (GGUF {why}{'; Llama 4 is natively multimodal' if arch == 'llama4' else ''})")
        return True
    if archs or c.meta:
        evidence.append("multimodal: no (text-only " + (f"config.json: {archs[0]})" if archs else f"GGUF {arch})"))
        return False
    return None


# ------------------------------------------------------------------------------------ which licence it is

LLAMA_IDS = (*lic._LLAMA, "llama4")  # llama2, llama3, llama3.1, llama3.2, llama3.3 (hearth.store.license), llama4
# ScanCode's keys (its license database; the SPDX form is LicenseRef-scancode-<key>). llama-3-license-2024 is in
# scancode-toolkit but not in the index license-expression 30.4 bundles; llama-4-license-2025 is Llama 4's AUP.
SCANCODE = {"llama2": "llama-2-license-2023", "llama3": "llama-3-license-2024", "llama3.1": "llama-3.1-license-2024",
            "llama3.2": "llama-3.2-license-2024", "llama3.3": "llama-3.3-license-2024", "llama4": "llama-4-cla-2025",
            "gemma": "gemma-tou-2024-04-01"}


def llama_ref(text: str | None) -> str | None:
    """llama2 / llama3 / llama3.1 ... / llama4 named in an id, a licence name or a link."""
    m = re.search(r"llama[\s_-]?(2|3|4)(?:[._]([0-9]))?(?![0-9])", text or "", re.IGNORECASE)
    lid = m and f"llama{m.group(1)}" + (f".{m.group(2)}" if m.group(2) else "")
    return lid if lid in LLAMA_IDS else None


_LLAMA_CLAUSE = re.compile(r"(?:meta\s+)?llama\s*(2|3(?:\.[0-9])?|4)\s+(community\s+license|version\s+(?:release|"
                           r"effective)\s+date|is\s+licensed\s+under|acceptable\s+use\s+policy)", re.IGNORECASE)
_MARKERS = [("700 million monthly active users", "the 700 million monthly active users threshold (§2)"),
            ("built with meta llama 3", '"Built with Meta Llama 3" (§1.b.i)'), ("built with llama", '"Built with Llama" (§1.b.i)'),
            ("improve any other large language model", "no improving other LLMs (§1.b.v)"),
            ("multimodal models included in", "the EU multimodal restriction (Acceptable Use Policy)")]


def identify(text: str) -> tuple[str | None, list[str]]:
    """The licence a text is (hearth's id), and the distinctive phrases that say so."""
    head = " ".join(text[:40000].split())
    low = head.lower()
    found = [why for phrase, why in _MARKERS if phrase in low]
    m = _LLAMA_CLAUSE.search(head)
    if m:
        lid = f"llama{m.group(1)}"
        return (lid if lid in LLAMA_IDS else "llama"), [f'"{" ".join(m.group(0).split())}"', *found]
    lid = lic.identify_text(head)
    if lid:
        return lid, [f"the text of the {lic.title(lid) or lid}"]
    if "700 million monthly active users" in low and "llama materials" in low:
        return "llama", found  # a Llama licence, version unnamed
    return None, []


def id_of(value: str) -> str | None:
    lid = llama_ref(value) or lic.normalize_id(value)
    return None if lid in (None, "other", "unknown", "custom") else lid


def spdx_expression(value: str) -> tuple[str | None, list[str], str]:
    """A declared value as an SPDX expression: (normalised expression, its licence ids, operator)."""
    from license_expression import ExpressionError, get_spdx_licensing

    licensing = get_spdx_licensing()
    try:
        info = licensing.validate(value)
        if info.errors or not info.normalized_expression:
            return None, [], ""
        parsed = licensing.parse(value)
    except (ExpressionError, AttributeError, TypeError):  # 30.4 raises AttributeError on some broken ones
        return None, [], ""
    ids = [id_of(s.key) or s.key.lower() for s in licensing.license_symbols(parsed)]
    return info.normalized_expression, ids, type(parsed).__name__


def keys_of(lid: str) -> tuple[str | None, str | None]:
    """(SPDX id, ScanCode key) of one of hearth's ids, from ScanCode's index as license-expression bundles it."""
    from license_expression import get_license_index

    if lid in SCANCODE:
        key = SCANCODE[lid]
        entry = next((e for e in get_license_index() if e["license_key"] == key), None)
        return (entry["spdx_license_key"] if entry else f"LicenseRef-scancode-{key}"), key
    spdx, ids, _ = spdx_expression(lid)
    if spdx is None:
        return None, None
    entry = next((e for e in get_license_index() if (e.get("spdx_license_key") or "").lower() == spdx.lower()), None)
    return spdx, entry["license_key"] if entry else None


def from_texts(texts: dict[str, str], evidence: list[str]) -> str | None:
    """The licence the texts are: a LICENSE file first, a versioned Llama id over an unversioned one."""
    found = []
    for name in sorted(texts, key=lambda n: (not n.lower().startswith("licen"), n)):
        lid, why = identify(texts[name])
        if lid:
            evidence.append(f"{name}: {', '.join(why)}")
            found.append(lid)
    specific = [x for x in found if x != "llama"]
    return specific[0] if specific else (found[0] if found else None)


def from_declared(c: Carried, evidence: list[str]) -> tuple[str | None, str | None, list[str], str]:
    """(licence id, SPDX expression of several licences, their ids, AND/OR) from the ids the model declares."""
    lid_out, expr, members, op = None, None, [], ""
    for where, value in declared(c):
        spdx, ids, kind = spdx_expression(value)
        lid = ids[0] if spdx and len(ids) > 1 else id_of(value)
        if spdx and len(ids) > 1 and expr is None:
            expr, members, op = spdx, ids, kind
        if lid is None:
            continue
        known = lid in LLAMA_IDS or lid in lic._OTHERS or spdx is not None or spdx_expression(lid)[0] is not None
        evidence.append(f"{where}: {value}" + ("" if known else " (a licence hearth does not know)"))
        lid_out = lid_out or (lid if known else None)
    return lid_out, expr, members, op
