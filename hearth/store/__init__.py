"""A verified, content-addressed model store that moves to air-gapped machines.

`Store` (store.py) is the API the CLI uses: pull, list, show, rm, cp, verify, export, import.
`stored_model_path` is the loader's hook: plain names are looked up here first.
Only `hearth pull` imports torch (hearth's readers vet the source); list, show, rm, cp, verify, export and
import do not.
"""

from hearth.store.manifest import Layer, LicenseInfo, Manifest, Summary
from hearth.store.common import Result, default_home
from hearth.store.store import Store, VerifyReport, stored_model_path

__all__ = ["Layer", "LicenseInfo", "Manifest", "Result", "Store", "Summary", "VerifyReport", "default_home", "stored_model_path"]
