"""hearth.release.signing: a release folder signed with OpenSSF model signing (key mode), offline.

Checked against the outside tool both ways: the `model_signing` CLI verifies what hearth signed (and rejects it once
tampered), and hearth verifies what the CLI signed. A tampered folder is a result naming the files; unusable input
(no model.sig, a key of the wrong kind) is a HearthError. Signing and verifying run in a subprocess with hearth's
netguard installed and an audit hook recording every socket connection or name lookup: there must be none.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hearth.errors import HearthError
from hearth.release.signing import (
    SIGNATURE_NAME, generate_keypair, read_signature, sign_folder, verify_folder)

WEIGHTS = "model.safetensors"
MODEL_SIGNING_CLI = Path(sys.executable).parent / "model_signing"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "release.key", d / "release.pub")
    return d / "release.key", d / "release.pub"


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("other-keys")
    generate_keypair(d / "other.key", d / "other.pub")
    return d / "other.key", d / "other.pub"


def make_release(root: Path) -> Path:
    """A release folder: 3 MB of 'weights', a card, a license, a bom in a subfolder, and git files to be ignored."""
    folder = root / "release"
    (folder / "bom").mkdir(parents=True)
    (folder / WEIGHTS).write_bytes(random.Random(0).randbytes(3 << 20))
    (folder / "README.md").write_text("# smollm2 fine-tune\n\nA model card.\n")
    (folder / "LICENSE").write_text("Apache License 2.0\n")
    (folder / "bom" / "bom.cdx.json").write_text(json.dumps({"bomFormat": "CycloneDX", "components": []}))
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    return folder


def signed_files(folder: Path) -> set[str]:
    statement = json.loads(read_signature(folder / SIGNATURE_NAME).payload)
    return {r["name"] for r in statement["predicate"]["resources"]}


def cli(*args: str) -> subprocess.CompletedProcess:
    assert MODEL_SIGNING_CLI.is_file(), f"the model_signing console script is missing beside {sys.executable}"
    return subprocess.run([str(MODEL_SIGNING_CLI), *args], capture_output=True, text=True, timeout=120)


def cli_verify(folder: Path, public_key: Path) -> subprocess.CompletedProcess:
    return cli("verify", "key", str(folder), "--signature", str(folder / SIGNATURE_NAME),
               "--public_key", str(public_key))


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


# ------------------------------------------------------------------------------------------- keys


def test_generate_keypair_writes_a_p256_pair_private_0600_and_never_overwrites(tmp_path):
    from cryptography.hazmat.primitives import serialization

    priv, pub = tmp_path / "k" / "release.key", tmp_path / "k" / "release.pub"
    generate_keypair(priv, pub)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(priv.read_bytes(), password=None)
    public = serialization.load_pem_public_key(pub.read_bytes())
    assert private.curve.name == "secp256r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    before = priv.read_bytes()
    with pytest.raises(HearthError, match="already exists"):
        generate_keypair(priv, tmp_path / "k" / "new.pub")
    assert priv.read_bytes() == before and not (tmp_path / "k" / "new.pub").exists()


# ------------------------------------------------------------------------------------------- sign, verify, interop


def test_sign_then_verify_ok_and_the_model_signing_cli_agrees(tmp_path, keys):
    folder = make_release(tmp_path)
    sig = sign_folder(folder, keys[0])
    assert sig == folder.resolve() / SIGNATURE_NAME and sig.is_file()
    # every file is in the signature; model.sig itself and git files are not; no temporary file is left behind
    assert signed_files(folder) == {WEIGHTS, "README.md", "LICENSE", "bom/bom.cdx.json"}
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [WEIGHTS, "README.md", "LICENSE", "bom", ".gitattributes", SIGNATURE_NAME])
    result = verify_folder(folder, keys[1])
    assert result.ok, result.message
    assert (result.changed, result.added, result.removed) == ([], [], [])
    assert "4 files" in result.message
    done = cli_verify(folder, keys[1])
    assert done.returncode == 0, done.stderr
    assert "Verification succeeded" in done.stdout
    # re-signing replaces model.sig (it is never hashed into its own manifest)
    sign_folder(folder, keys[0])
    assert verify_folder(folder, keys[1]).ok and SIGNATURE_NAME not in signed_files(folder)


def test_one_flipped_byte_is_named_as_changed_and_the_cli_rejects_it(tmp_path, keys):
    folder = make_release(tmp_path)
    sign_folder(folder, keys[0])
    flip_byte(folder / WEIGHTS, 2_000_000)
    result = verify_folder(folder, keys[1])
    assert not result.ok
    assert (result.changed, result.added, result.removed) == ([WEIGHTS], [], [])
    assert WEIGHTS in result.message and "\n" not in result.message
    done = cli_verify(folder, keys[1])
    assert done.returncode != 0 and "Verification failed" in done.stderr


def test_an_added_file_is_named_as_added(tmp_path, keys):
    folder = make_release(tmp_path)
    sign_folder(folder, keys[0])
    (folder / "bom" / "extra.py").write_text("import os\n")
    result = verify_folder(folder, keys[1])
    assert not result.ok
    assert (result.changed, result.added, result.removed) == ([], ["bom/extra.py"], [])
    assert cli_verify(folder, keys[1]).returncode != 0


def test_a_removed_file_is_named_as_removed(tmp_path, keys):
    folder = make_release(tmp_path)
    sign_folder(folder, keys[0])
    (folder / "LICENSE").unlink()
    result = verify_folder(folder, keys[1])
    assert not result.ok
    assert (result.changed, result.added, result.removed) == ([], [], ["LICENSE"])
    assert "removed LICENSE" in result.message


def test_changed_added_and_removed_at_once(tmp_path, keys):
    folder = make_release(tmp_path)
    sign_folder(folder, keys[0])
    (folder / "README.md").write_text("# a different card\n")
    (folder / "bom" / "bom.cdx.json").unlink()
    (folder / "notes.txt").write_text("hi\n")
    result = verify_folder(folder, keys[1])
    assert (result.ok, result.changed, result.added, result.removed) == (
        False, ["README.md"], ["notes.txt"], ["bom/bom.cdx.json"])


def test_git_files_are_not_signed_so_changing_them_does_not_fail(tmp_path, keys):
    folder = make_release(tmp_path)
    sign_folder(folder, keys[0])
    (folder / ".gitattributes").write_text("changed\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert verify_folder(folder, keys[1]).ok


def test_a_wrong_public_key_fails_and_names_no_files(tmp_path, keys, other_keys):
    folder = make_release(tmp_path)
    sign_folder(folder, keys[0])
    flip_byte(folder / WEIGHTS, 10)  # tampered too: but a foreign signature's file list is not evidence of anything
    result = verify_folder(folder, other_keys[1])
    assert not result.ok
    assert (result.changed, result.added, result.removed) == ([], [], [])
    assert "different key" in result.message
    assert cli_verify(folder, other_keys[1]).returncode != 0


def test_a_rewritten_signed_manifest_is_not_trusted(tmp_path, keys):
    """An attacker drops the weights from the signed statement (and fixes nothing else): the envelope no longer
    verifies, so hearth must not report a diff computed from the forged list."""
    folder = make_release(tmp_path)
    sig = sign_folder(folder, keys[0])
    bundle = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"] = [r for r in statement["predicate"]["resources"] if r["name"] != WEIGHTS]
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(bundle))
    result = verify_folder(folder, keys[1])
    assert not result.ok
    assert (result.changed, result.added, result.removed) == ([], [], [])
    assert "altered" in result.message
    assert cli_verify(folder, keys[1]).returncode != 0


def test_a_folder_signed_by_the_model_signing_cli_verifies_with_hearth(tmp_path, keys):
    folder = make_release(tmp_path)
    done = cli("sign", "key", str(folder), "--signature", str(folder / SIGNATURE_NAME), "--private_key", str(keys[0]))
    assert done.returncode == 0, done.stderr
    result = verify_folder(folder, keys[1])
    assert result.ok, result.message
    flip_byte(folder / "README.md", 0)
    (folder / "LICENSE").unlink()
    result = verify_folder(folder, keys[1])
    assert (result.ok, result.changed, result.added, result.removed) == (False, ["README.md"], [], ["LICENSE"])


# ------------------------------------------------------------------------------------------- unusable input


def test_unusable_input_is_a_one_line_hearth_error(tmp_path, keys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    folder = make_release(tmp_path)
    with pytest.raises(HearthError, match="not a folder"):
        sign_folder(tmp_path / "nowhere", keys[0])
    with pytest.raises(HearthError, match="does not exist"):
        sign_folder(folder, tmp_path / "missing.key")
    with pytest.raises(HearthError, match="is a public key"):
        sign_folder(folder, keys[1])
    (tmp_path / "junk.key").write_text("not a key\n")
    with pytest.raises(HearthError, match="not a PEM private key"):
        sign_folder(folder, tmp_path / "junk.key")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.key").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(HearthError, match="needs an EC key"):
        sign_folder(folder, tmp_path / "rsa.key")
    k1 = ec.generate_private_key(ec.SECP256K1())  # an EC curve model_signing does not accept
    (tmp_path / "k1.key").write_bytes(k1.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(HearthError, match="secp256k1"):
        sign_folder(folder, tmp_path / "k1.key")
    encrypted = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    (tmp_path / "enc.key").write_bytes(encrypted)
    with pytest.raises(HearthError, match="encrypted"):
        sign_folder(folder, tmp_path / "enc.key")
    assert not (folder / SIGNATURE_NAME).exists()  # nothing was signed by any of those
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HearthError, match="no files"):
        sign_folder(empty, keys[0])

    with pytest.raises(HearthError, match="sign the folder first"):
        verify_folder(folder, keys[1])
    sign_folder(folder, keys[0])
    with pytest.raises(HearthError, match="is a private key"):
        verify_folder(folder, keys[0])
    with pytest.raises(HearthError, match="does not exist"):
        verify_folder(folder, tmp_path / "missing.pub")
    (folder / SIGNATURE_NAME).write_text('{"not": "a bundle"}')
    with pytest.raises(HearthError, match="not a model_signing signature"):
        verify_folder(folder, keys[1])
    (folder / SIGNATURE_NAME).write_text("garbage{")
    with pytest.raises(HearthError, match="not a model_signing signature") as err:
        verify_folder(folder, keys[1])
    assert "\n" not in str(err.value)


def test_a_symlink_in_the_folder_is_refused_when_signing(tmp_path, keys):
    folder = make_release(tmp_path)
    (folder / "link").symlink_to(folder / "LICENSE")
    with pytest.raises(HearthError, match="symlink"):
        sign_folder(folder, keys[0])
    (folder / "link").unlink()
    sign_folder(folder, keys[0])
    (folder / "link").symlink_to(tmp_path)  # planted after signing: a failed verification, not a crash
    result = verify_folder(folder, keys[1])
    assert not result.ok and "symlink" in result.message


# ------------------------------------------------------------------------------------------- offline


OFFLINE_SCRIPT = r"""
import sys
from pathlib import Path
attempts = []
def record(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                 "socket.sendto", "socket.sendmsg"):
        attempts.append((event, repr(args)[:200]))
sys.addaudithook(record)
from hearth import netguard
netguard.install()
from hearth.release.signing import generate_keypair, sign_folder, verify_folder
folder, keydir = Path(sys.argv[1]), Path(sys.argv[2])
generate_keypair(keydir / "k.key", keydir / "k.pub")
sign_folder(folder, keydir / "k.key")
assert verify_folder(folder, keydir / "k.pub").ok
(folder / "LICENSE").write_text("tampered\n")
assert verify_folder(folder, keydir / "k.pub").changed == ["LICENSE"]
print("ATTEMPTS", attempts)
assert not attempts, attempts
print("OFFLINE OK")
"""


def test_signing_and_verifying_make_no_network_attempt(tmp_path):
    """In a subprocess (netguard's audit hook cannot be removed): netguard refuses any connection, and a second hook
    records even the attempts a library might catch and swallow (a Sigstore/TUF refresh, a Rekor upload)."""
    folder = make_release(tmp_path)
    keydir = tmp_path / "keys"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, str(folder), str(keydir)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OFFLINE OK" in done.stdout and "ATTEMPTS []" in done.stdout


def test_hearth_signature_is_a_standard_bundle_with_no_transparency_log(tmp_path, keys):
    folder = make_release(tmp_path)
    sig = sign_folder(folder, keys[0])
    bundle = json.loads(sig.read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["verificationMaterial"]["tlogEntries"] == []
    assert bundle["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    by_name = {r["name"]: r for r in statement["predicate"]["resources"]}
    assert by_name[WEIGHTS]["algorithm"] == "sha256"
    assert by_name[WEIGHTS]["digest"] == hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    assert SIGNATURE_NAME in statement["predicate"]["serialization"]["ignore_paths"]
