"""Sign a release folder with OpenSSF model signing, offline, and say exactly what changed when it no longer verifies.

A release (weights, README.md card, LICENSE, bom, ...) is only worth handing over an air gap if the receiver can
check that nothing in it changed since the publisher signed it. hearth does not invent a format for that: it uses
OpenSSF's `model_signing` (PyPI `model-signing`) in its private-key mode, so the receiver can check a release with
`model_signing verify key FOLDER --signature FOLDER/model.sig --public_key KEY.pub` and no hearth at all. Key mode
needs no network: no Sigstore, no OIDC identity, no transparency log (Rekor) — the trust is the public key alone.

- `generate_keypair`: an EC P-256 key pair in PEM (the curves `model_signing`'s key mode accepts are P-256/384/521);
  the private key unencrypted and 0600, because key mode is run unattended by `hearth release` and has no prompt.
- `sign_folder`: hashes every file in the folder (SHA-256 per file; `.git*` and `model.sig` itself ignored, as the
  `model_signing` CLI does) into an in-toto statement, signs it as a DSSE envelope and writes the Sigstore bundle
  JSON to `folder/model.sig`.
- `verify_folder`: `model_signing`'s own verification decides pass or fail. On a fail, hearth checks the envelope's
  signature itself (DSSE, ECDSA) and, only if the signed statement is authentic, diffs its file list against the
  folder to name each changed, added and removed file. An envelope that this key did not sign names no files: its
  list could say anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth.errors import HearthError
from hearth import safejson

SIGNATURE_NAME = "model.sig"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # model_signing's key mode (sign_ec_key.py)
_MAX_SIG_BYTES = 64 << 20  # a signature lists one digest per file (or shard): megabytes at most


@dataclass
class VerifyResult:
    """The verdict on a signed folder. `ok` is model_signing's verdict; the three lists name files (paths relative to
    the folder, `/`-separated) and are filled only when the signature is authentic but the folder differs from it."""

    ok: bool
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    message: str = ""


# ----------------------------------------------------------------------------------------------- keys


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new EC P-256 key pair as PEM: the private key (PKCS#8, unencrypted, mode 0600) and its public key.

    Refuses to overwrite either file: replacing a release key silently would orphan every signature made with it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise HearthError(f"the private and public key paths are the same file ({private_path}); give two paths")
    for p in (private_path, public_path):
        if p.exists() or p.is_symlink():
            raise HearthError(f"{p} already exists; hearth does not overwrite keys (move it away or pick another path)")
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)  # half a key pair is worse than none
        raise


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (never an existing one: O_EXCL, which also refuses a symlink planted there) with `mode` from the
    first byte on, so the private key is never readable by others, not even between open and chmod."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise HearthError(f"{path} already exists; hearth does not overwrite keys") from None
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away from a 0644 public key; never adds any to 0600
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.close(fd)


def _read_key_file(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise HearthError(f"{what} {path} does not exist (make one with hearth's generate_keypair)")
    if path.stat().st_size > 1 << 20:
        raise HearthError(f"{what} {path} is not a PEM key (over 1 MB)")
    return path.read_bytes()


def load_private_key(path: Path):
    """The EC private key in `path`, or a HearthError saying why it cannot sign (missing, public, encrypted, RSA)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise HearthError(f"private key {path} is encrypted; model signing's key mode here needs an unencrypted "
                          "key (keep it on the offline signing machine, mode 0600)") from None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        if b"PUBLIC KEY-----" in data:
            raise HearthError(f"{path} is a public key; signing needs the private key") from None
        raise HearthError(f"{path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in SUPPORTED_CURVES:
        raise HearthError(f"private key {path} is {_describe_key(key)}; model signing's key mode needs an EC key on "
                          "P-256, P-384 or P-521")
    return key


def load_public_key(path: Path):
    """The EC public key in `path`, or a HearthError (missing, a private key given by mistake, not EC)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise HearthError(f"{path} is a private key; verify with the public key (never ship the private one)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HearthError(f"{path} is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in SUPPORTED_CURVES:
        raise HearthError(f"public key {path} is {_describe_key(key)}; model signing's key mode needs an EC key on "
                          "P-256, P-384 or P-521")
    return key


def _describe_key(key: Any) -> str:
    curve = getattr(key, "curve", None)
    return f"an EC key on {curve.name}" if curve is not None else f"a {type(key).__name__.lstrip('_')}"


def key_fingerprint(public_key) -> str:
    """SHA-256 of the public key's PEM: the `hint` model_signing writes into the bundle, so the two can be compared."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


# ----------------------------------------------------------------------------------------------- signing


def _check_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise HearthError(f"{folder} is not a folder; give the release folder to sign or verify")
    return folder.resolve()  # a symlinked folder path is fine; model_signing refuses symlinks it walks into


def sign_folder(folder: Path, private_key: Path) -> Path:
    """Sign every file under `folder` (except `.git*` and `model.sig`) with `private_key`; return `folder/model.sig`.

    The signature is written beside a temporary name and renamed over `model.sig` (written after hashing, so the
    temporary file is never part of the manifest), so an interrupted re-sign leaves the old signature whole."""
    from model_signing import hashing, signing

    folder = _check_folder(folder)
    private_key = Path(private_key)
    load_private_key(private_key)  # refuse here, with a reason, what model_signing would fail on with a traceback
    if not any(p.name != SIGNATURE_NAME and p.is_file() for p in folder.rglob("*")):
        raise HearthError(f"{folder} holds no files to sign")
    target = folder / SIGNATURE_NAME
    tmp = folder / f".{SIGNATURE_NAME}.{os.getpid()}.tmp"
    config = (signing.Config()
              .use_elliptic_key_signer(private_key=private_key)
              .set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=True)))
    try:
        config.sign(folder, tmp)
        os.replace(tmp, target)
    except ValueError as e:  # model_signing: a symlink in the folder, an unreadable entry
        raise HearthError(f"cannot sign {folder}: {_one_line(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


# ----------------------------------------------------------------------------------------------- verifying


@dataclass
class _Envelope:
    payload: bytes  # the raw in-toto statement (JSON) the signature covers
    payload_type: str
    signature: bytes  # DER ECDSA
    key_hint: str


def read_signature(path: Path) -> _Envelope:
    """The DSSE envelope of a model_signing bundle (no verification); HearthError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise HearthError(f"{path} does not exist; sign the folder first (hearth's sign_folder or model_signing sign)")
    try:
        bundle = safejson.read(path, max_depth=32, max_bytes=_MAX_SIG_BYTES)
        env = bundle["dsseEnvelope"]
        hint = ((bundle.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint") or ""
        return _Envelope(payload=base64.b64decode(env["payload"], validate=True), payload_type=str(env["payloadType"]),
                         signature=base64.b64decode(env["signatures"][0]["sig"], validate=True), key_hint=str(hint))
    except HearthError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
        raise HearthError(f"{path} is not a model_signing signature (a Sigstore bundle with a DSSE envelope)") from None


def envelope_signed_by(envelope: _Envelope, public_key) -> bool:
    """Whether `public_key` made the envelope's signature: ECDSA over DSSE's pre-authentication encoding (PAE), the
    check model_signing's key verifier makes. Done here too so a failed verification can tell a foreign or altered
    signature (trust nothing in it) from an authentic one over a folder that has since changed."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    ptype = envelope.payload_type.encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(envelope.payload), envelope.payload)
    digest = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[public_key.curve.key_size]
    try:
        public_key.verify(envelope.signature, pae, ec.ECDSA(digest))
    except InvalidSignature:
        return False
    return envelope.payload_type == IN_TOTO_PAYLOAD_TYPE


def verify_folder(folder: Path, public_key: Path) -> VerifyResult:
    """Check `folder` against `folder/model.sig` with `public_key`. A failed check is a result, not an exception: the
    caller prints it; HearthError is for input that cannot be checked at all (no model.sig, not a key)."""
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    folder = _check_folder(folder)
    key = load_public_key(public_key)
    sig_path = folder / SIGNATURE_NAME
    envelope = read_signature(sig_path)
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key)).verify(folder, sig_path)
    except (ValueError, KeyError, TypeError, InvalidSignature) as e:
        return _explain_failure(folder, key, envelope, e)
    n = len({_file_of(r["name"], _statement(envelope)) for r in _statement(envelope)["predicate"]["resources"]})
    return VerifyResult(ok=True, message=f"verified: {n} files match {SIGNATURE_NAME}, signed by key "
                                         f"{key_fingerprint(key)[:16]}")


def _explain_failure(folder: Path, key, envelope: _Envelope, error: BaseException) -> VerifyResult:
    if not envelope_signed_by(envelope, key):
        whose = ("a different key" if envelope.key_hint and envelope.key_hint != key_fingerprint(key)
                 else "this key, or it was altered after signing")
        return VerifyResult(ok=False, message=f"{SIGNATURE_NAME} was not signed by {whose}: its file list is not "
                                              f"trusted (public key {key_fingerprint(key)[:16]})")
    try:
        statement = _statement(envelope)
        expected = _group_by_file(
            {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}, statement)
        actual = _group_by_file(_current_digests(folder, statement["predicate"]["serialization"]), statement)
    except (ValueError, KeyError, TypeError) as e:  # e.g. a symlink planted in the folder: model_signing said why
        why = _one_line(error) if _one_line(e) == _one_line(error) else f"{_one_line(error)} ({_one_line(e)})"
        return VerifyResult(ok=False, message=f"verification failed: {why}")
    changed = sorted(f for f in expected.keys() & actual.keys() if expected[f] != actual[f])
    added = sorted(actual.keys() - expected.keys())
    removed = sorted(expected.keys() - actual.keys())
    if not (changed or added or removed):
        return VerifyResult(ok=False, message=f"verification failed: {_one_line(error)}")
    parts = [f"{what} {_names(names)}" for what, names in
             (("changed", changed), ("added", added), ("removed", removed)) if names]
    return VerifyResult(ok=False, changed=changed, added=added, removed=removed,
                        message=f"the folder differs from its signature: {'; '.join(parts)}")


def _statement(envelope: _Envelope) -> dict:
    statement = safejson.loads(envelope.payload, max_depth=32, max_bytes=_MAX_SIG_BYTES)
    if not isinstance(statement, dict) or not isinstance(statement.get("predicate"), dict):
        raise ValueError("the signed statement has no predicate")
    return statement


def _file_of(name: str, statement: dict) -> str:
    """A manifest entry's file: the name itself, or `path` of a shard named `path:start:end`."""
    if statement["predicate"]["serialization"].get("method") == "shards":
        return name.rsplit(":", 2)[0]
    return name


def _group_by_file(digests: dict[str, str], statement: dict) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, digest in digests.items():
        out.setdefault(_file_of(name, statement), {})[name] = str(digest).lower()
    return out


def _current_digests(folder: Path, serialization: dict) -> dict[str, str]:
    """The folder hashed as the signature says it was (method, algorithm, shard size, ignored paths), through
    model_signing's public hashing API, so both sides name and hash files the same way."""
    from model_signing import hashing

    ignored = [*serialization.get("ignore_paths", []), SIGNATURE_NAME]
    config = hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=True)
    algorithm = serialization["hash_type"]
    if serialization["method"] == "files":
        config.use_file_serialization(hashing_algorithm=algorithm)
    elif serialization["method"] == "shards":
        config.use_shard_serialization(hashing_algorithm=algorithm, shard_size=int(serialization["shard_size"]))
    else:
        raise ValueError(f"unknown serialization method {serialization['method']!r}")
    config.set_allow_symlinks(bool(serialization.get("allow_symlinks", False)))
    manifest = config.hash(folder)
    return {rd.identifier: rd.digest.digest_hex for rd in manifest.resource_descriptors()}


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
