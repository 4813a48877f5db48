"""What a release is, in one plain record: the input of the openness file, the ML-BOM and the provenance.

`hearth release` gathers these facts once (digests, licences, training settings, times) so the three documents
cannot disagree with each other: each is a view of the same record, written by its own module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hearth.errors import HearthError

# The files a model's numbers live in: they are the provenance's subjects and the BOM model's hashes; the other
# files of a release (card, licence texts, configs, tokenizer) travel beside them.
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Artifact:
    """A file in the release folder."""

    path: str  # relative to the folder, with "/"
    sha256: str  # 64 lowercase hex digits
    size: int


@dataclass(frozen=True)
class Dataset:
    """Training data of the fine-tune, named by its digest: the data itself is not shipped in the release."""

    name: str
    sha256: str
    rows: int
    path: str = ""
    license: str | None = None  # a normalised id as hearth.store.license writes it, or None: unknown


@dataclass(frozen=True)
class ReleaseFacts:
    name: str  # the released model's name
    version: str
    description: str
    base_model: str  # e.g. "HuggingFaceTB/SmolLM2-135M-Instruct", or a store name or path
    base_digest: str  # "sha256:..."
    base_license: str | None  # a normalised id: "apache-2.0", "llama3.2", ... (hearth.store.license) or None
    license: str | None  # the release's licence id (a fine-tune inherits its base's)
    relation: str  # adapter | merge | quantized | finetune
    artifacts: list[Artifact]  # every file written so far (weights, card, licence files, ...)
    datasets: list[Dataset]  # training data of the fine-tune
    training: dict  # settings: steps, lr, rank, tokens, seconds, energy_kwh (may be empty)
    builder_version: str  # hearth's version
    started: str  # ISO 8601 UTC time the build started
    finished: str  # ... and finished
    components: dict[str, str | None]  # MOF components present -> their licence id (None: present, unlicensed)
    producer: str = ""  # who releases it (MOT's release.producer)
    contact: str = ""
    repository: str = ""  # where the release's source lives, if anywhere public


RELATIONS = ("adapter", "merge", "quantized", "finetune")


def weight_artifacts(facts: ReleaseFacts) -> list[Artifact]:
    """The artifacts that hold parameters (by suffix), in path order."""
    return sorted((a for a in facts.artifacts if a.path.lower().endswith(WEIGHT_SUFFIXES)), key=lambda a: a.path)


def sha256_hex(value: str, what: str) -> str:
    """The 64 hex digits of a sha256 given bare or as "sha256:..."; a malformed one is refused, not written."""
    hexd = value.removeprefix("sha256:").lower() if isinstance(value, str) else ""
    if not _SHA256_RE.match(hexd):
        raise HearthError(f"{what} has no valid sha256 digest ({value!r}): expected 64 hex digits")
    return hexd


def hf_repo_id(name: str) -> str | None:
    """The "owner/name" of a Hugging Face repository id (not a path), or None: the base's public address, if any."""
    if re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", name or "") and not name.startswith("."):
        return name
    return None

