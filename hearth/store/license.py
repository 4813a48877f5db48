"""Licenses travel with the weights: find a model's license and say in plain words what it asks of you.

Found in GGUF metadata (`general.license`, `general.license.name`, `general.license.link`), in a Hugging
Face directory (`LICENSE*`, `USE_POLICY.md`, the `license:` key of README.md's YAML front matter), or
given with `hearth pull --license FILE`. Ids are normalised (`Apache-2.0` → `apache-2.0`, `llama3_2` /
"LLAMA 3.2 COMMUNITY LICENSE" → `llama3.2`). The summaries are a reader's guide, not legal advice; the
license layer (`hearth show NAME --license`) is the text that binds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hearth.store.manifest import LicenseInfo

# Files of a HF model directory that are part of its license.
LICENSE_FILE_RE = re.compile(r"^(licen[sc]e|use_policy|notice|responsible_use_guide)([._-].*)?$", re.IGNORECASE)

_LLAMA_ID_RE = re.compile(r"llama[\s_-]?([23])(?:[._]([0-9]))?(?![0-9])", re.IGNORECASE)
_LLAMA_TEXT_RE = re.compile(r"llama\s*([23])(?:\.([0-9]))?\s+community\s+license", re.IGNORECASE)

_LLAMA = {
    # id: (license title, release date, acceptable use policy, "Built with ...", name prefix, notice)
    "llama2": ("Llama 2 Community License", "July 18, 2023", "https://ai.meta.com/llama/use-policy", None, None,
               "Llama 2 is licensed under the LLAMA 2 Community License, Copyright (c) Meta Platforms, Inc. All Rights Reserved."),
    "llama3": ("Meta Llama 3 Community License", "April 18, 2024", "https://llama.meta.com/llama3/use-policy",
               "Built with Meta Llama 3", "Llama 3",
               "Meta Llama 3 is licensed under the Meta Llama 3 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved."),
    "llama3.1": ("Llama 3.1 Community License", "July 23, 2024", "https://llama.meta.com/llama3_1/use-policy",
                 "Built with Llama", "Llama",
                 "Llama 3.1 is licensed under the Llama 3.1 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved."),
    "llama3.2": ("Llama 3.2 Community License", "September 25, 2024", "https://www.llama.com/llama3_2/use-policy",
                 "Built with Llama", "Llama",
                 "Llama 3.2 is licensed under the Llama 3.2 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved."),
    "llama3.3": ("Llama 3.3 Community License", "December 6, 2024", "https://www.llama.com/llama3_3/use-policy",
                 "Built with Llama", "Llama",
                 "Llama 3.3 is licensed under the Llama 3.3 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved."),
}

_OTHERS = {
    "apache-2.0": ("Apache License 2.0", "Permissive: use, modify and redistribute, commercially too. Keep the license text and any "
                   "NOTICE file with copies, mark the files you changed. Includes a patent grant."),
    "mit": ("MIT License", "Permissive: use, modify and redistribute freely; keep the copyright and license notice."),
    "bsd-3-clause": ("BSD 3-Clause License", "Permissive: keep the copyright notice; do not use the authors' names to endorse your product."),
    "bsd-2-clause": ("BSD 2-Clause License", "Permissive: keep the copyright notice and license text."),
    "cc-by-4.0": ("Creative Commons Attribution 4.0", "Share and adapt, commercially too, if you credit the authors and link the license."),
    "cc-by-sa-4.0": ("Creative Commons Attribution-ShareAlike 4.0", "Share and adapt with credit; adaptations must use the same license."),
    "cc-by-nc-4.0": ("Creative Commons Attribution-NonCommercial 4.0", "Non-commercial use only, with credit to the authors."),
    "cc-by-nc-sa-4.0": ("Creative Commons Attribution-NonCommercial-ShareAlike 4.0",
                        "Non-commercial use only, with credit; adaptations must use the same license."),
    "gpl-3.0": ("GNU General Public License v3.0", "Copyleft: distributing the model or a derivative requires sharing it under the GPL."),
    "agpl-3.0": ("GNU Affero General Public License v3.0", "Copyleft, also for use over a network: serving it obliges you to share the source."),
    "gemma": ("Gemma Terms of Use", "Use must follow Google's Gemma Prohibited Use Policy; pass the same terms on with copies and derivatives."),
    "openrail": ("Open RAIL License", "Use-based restrictions (listed in the license) travel with every copy and derivative."),
    "creativeml-openrail-m": ("CreativeML Open RAIL-M", "Use-based restrictions (listed in the license) travel with every copy and derivative."),
}

_ALIASES = {"apache2": "apache-2.0", "apache-2": "apache-2.0", "apache-license-2.0": "apache-2.0", "mit-license": "mit",
            "gpl-3": "gpl-3.0", "gplv3": "gpl-3.0", "cc-by": "cc-by-4.0"}

_TEXT_PATTERNS = [
    (re.compile(r"apache license,?\s+version 2\.0", re.IGNORECASE), "apache-2.0"),
    (re.compile(r"\bMIT License\b|Permission is hereby granted, free of charge", re.IGNORECASE), "mit"),
    (re.compile(r"Gemma Terms of Use", re.IGNORECASE), "gemma"),
    (re.compile(r"Attribution-NonCommercial-ShareAlike 4\.0", re.IGNORECASE), "cc-by-nc-sa-4.0"),
    (re.compile(r"Attribution-NonCommercial 4\.0", re.IGNORECASE), "cc-by-nc-4.0"),
    (re.compile(r"Attribution-ShareAlike 4\.0", re.IGNORECASE), "cc-by-sa-4.0"),
    (re.compile(r"Creative Commons Attribution 4\.0", re.IGNORECASE), "cc-by-4.0"),
    (re.compile(r"GNU AFFERO GENERAL PUBLIC LICENSE\s+Version 3", re.IGNORECASE), "agpl-3.0"),
    (re.compile(r"GNU GENERAL PUBLIC LICENSE\s+Version 3", re.IGNORECASE), "gpl-3.0"),
]

NO_LICENSE = ("No license was found with these weights: nothing grants you the right to use or redistribute them. "
              "Find the license where the model came from and add it: hearth pull SOURCE --license FILE")


def _llama_id(text: str | None, pattern: re.Pattern = _LLAMA_ID_RE) -> str | None:
    if not text:
        return None
    m = pattern.search(text)
    if not m:
        return None
    lid = f"llama{m.group(1)}" + (f".{m.group(2)}" if m.group(2) else "")
    return lid if lid in _LLAMA else None


def normalize_id(value: Any) -> str | None:
    """A license id as hearth names it; unknown ids are kept (lowercased), empty ones are None."""
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        return None
    llama = _llama_id(value)
    if llama:
        return llama
    v = re.sub(r"[\s_]+", "-", value.strip().lower())
    return _ALIASES.get(v, v)


def identify_text(text: str) -> str | None:
    """The license id a full license text is, if hearth knows it."""
    head = " ".join(text[:20000].split())
    llama = _llama_id(head, _LLAMA_TEXT_RE)
    if llama:
        return llama
    for pattern, lid in _TEXT_PATTERNS:
        if pattern.search(head):
            return lid
    return None


def title(lid: str | None) -> str | None:
    if lid in _LLAMA:
        return _LLAMA[lid][0]
    if lid in _OTHERS:
        return _OTHERS[lid][0]
    return None


def is_llama(info: LicenseInfo | None) -> bool:
    return info is not None and info.id in _LLAMA


def front_matter(readme: str) -> dict[str, Any]:
    """The top-level scalar (and simple list) keys of a model card's YAML front matter."""
    lines = readme.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out: dict[str, Any] = {}
    key = None
    for line in lines[1:]:
        if line.strip() in ("---", "..."):
            break
        m = re.match(r"^([A-Za-z_][\w-]*)\s*:\s*(.*)$", line)
        if m:
            key, value = m.group(1), m.group(2).strip()
            out[key] = _scalar(value) if value else []
        elif key is not None and isinstance(out.get(key), list) and re.match(r"^\s*-\s+", line):
            out[key].append(_scalar(re.sub(r"^\s*-\s+", "", line)))
    return out


def _scalar(value: str) -> str:
    value = value.split(" #", 1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


# ------------------------------------------------------------------------------------ detection


def from_gguf_metadata(meta: dict[str, Any]) -> LicenseInfo | None:
    lic, name, link = (meta.get(k) for k in ("general.license", "general.license.name", "general.license.link"))
    strings = [v for v in (lic, name, link) if isinstance(v, str) and v.strip()]
    if not strings:
        return None
    lid = next((x for x in map(_llama_id, strings) if x), None) or normalize_id(lic) or normalize_id(name)
    return LicenseInfo(id=lid, name=title(lid) or (name if isinstance(name, str) else None) or lid,
                       source="the GGUF metadata (general.license)", link=link if isinstance(link, str) else None)


def license_text_for_gguf(info: LicenseInfo, meta: dict[str, Any]) -> bytes:
    """The license layer of a GGUF that carries only a license id: what it says, and where it says it."""
    lines = [f"License: {info.id}"]
    if info.name and info.name != info.id:
        lines.append(f"Name: {info.name}")
    if info.link:
        lines.append(f"Link: {info.link}")
    model = meta.get("general.name")
    lines += ["", f"Found in the GGUF metadata of {model or 'this model'} (general.license*).",
              "The full license text did not ship inside the weights file."]
    return ("\n".join(lines) + "\n").encode()


def hf_license_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and LICENSE_FILE_RE.match(p.name))


def from_hf_dir(directory: Path) -> LicenseInfo | None:
    readme = directory / "README.md"
    fm = front_matter(readme.read_text(encoding="utf-8", errors="replace")) if readme.is_file() else {}
    files = hf_license_files(directory)
    text_id = None
    main = next((f for f in files if f.name.lower().startswith(("license", "licence"))), None)
    if main is not None:
        text_id = identify_text(main.read_text(encoding="utf-8", errors="replace"))
    fm_id = normalize_id(fm.get("license"))
    name = fm.get("license_name") if isinstance(fm.get("license_name"), str) else None
    link = fm.get("license_link") if isinstance(fm.get("license_link"), str) else None
    llama = next((x for x in (_llama_id(v) for v in (fm.get("license") if isinstance(fm.get("license"), str) else None, name, link)) if x), None)
    lid = llama or (fm_id if fm_id not in (None, "other") else None) or text_id or normalize_id(name) or fm_id
    if lid is None and main is None:
        return None
    if fm_id or name:
        source = "README.md front matter" + (f" and {main.name}" if main else "")
    else:
        source = main.name if main else "README.md"
    return LicenseInfo(id=lid, name=title(lid) or name or lid, source=source, link=link)


def from_file(path: Path, text: str) -> LicenseInfo:
    lid = identify_text(text)
    first = next((line.strip() for line in text.splitlines() if line.strip()), None)
    return LicenseInfo(id=lid, name=title(lid) or (first[:80] if first else None), source=f"--license {path.name}")


# ------------------------------------------------------------------------------------ summaries


def summarize(info: LicenseInfo | None) -> list[str]:
    """What the license asks, in plain sentences. The first line names it."""
    if info is None:
        return ["none found", NO_LICENSE]
    head = info.name or info.id or "unnamed license"
    if info.id and info.name and info.id not in (info.name,) and info.id not in _LLAMA:
        head = f"{info.name} ({info.id})"
    if info.id in _LLAMA:
        return [head, *_llama_conditions(info.id)]
    if info.id in _OTHERS:
        return [head, _OTHERS[info.id][1]]
    return [head, "hearth has no summary of this license; read it: hearth show NAME --license"]


def _llama_conditions(lid: str) -> list[str]:
    name, release, aup, built_with, prefix, notice = _LLAMA[lid]
    version = name.removeprefix("Meta ").removesuffix(" Community License")
    out = [
        f"Not an open-source license: Meta lets you use, copy, modify and redistribute {version} on these conditions.",
        f"700 million users: if your products or services (or your affiliates') had more than 700 million monthly "
        f"active users in the month before {release}, this license does not cover you; you must ask Meta for one.",
        f"Acceptable use: every use must follow the {version} Acceptable Use Policy ({aup}), which forbids among other "
        "things illegal, violent, deceptive and weapons-related uses.",
    ]
    if built_with:
        out.append(
            f'Attribution: if you distribute the model, a derivative of it, or a product or service that uses it, include a '
            f'copy of the license and display "{built_with}" prominently on a related website, user interface, blog post, '
            "about page or product documentation."
        )
        outputs = "" if lid == "llama3" else " (or its outputs)"
        out.append(
            f'Naming: if you use it{outputs} to create, train, fine-tune or improve an AI model that you distribute, '
            f'that model\'s name must begin with "{prefix}".'
        )
        out.append(f'Notice: ship the line "{notice}" in a "Notice" text file with every copy.')
    else:
        out.append(f'Attribution: ship a copy of the license and the line "{notice}" in a "Notice" text file with every copy.')
        out.append("Outputs: you may not use Llama 2 or its outputs to improve any other large language model "
                   "(Llama 2 derivatives excepted).")
        out.append('Naming: Llama 2 sets no naming rule for derived models and asks for no "Built with Llama" display '
                   "(those duties came with Llama 3).")
    if lid == "llama3.2":
        out.append("Vision models: for the multimodal Llama 3.2 models the Acceptable Use Policy withholds these rights "
                   "from people and companies based in the European Union (end users of products built on them excepted).")
    return out
