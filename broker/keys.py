"""The keys the broker holds, encrypted at rest with a key-encryption key (KEK) kept away from the data.

Two kinds of private key live with the broker: its own Ed25519 signing keys (audit checkpoints, signed
reports), in ``<state dir>/keys/broker-keys.json``, and the issuer keys it generated for issuers that do not
hold their own (database column ``issuer_keys.private_wrapped``). Both are AES-256-GCM ciphertexts under the
KEK (``cryptography``'s AEAD, a fresh 96-bit nonce each time, the key's purpose and id as associated data,
so a wrapped key cannot be moved to another row or file). The KEK itself is a file outside the state dir and
the database (``SBX_KEK_FILE``; embedded default ``~/.config/sandbox-broker/kek``, written by ``sbx init``
with mode 0600; production: a mounted Secret, without which the broker does not start), so a copy of the
state dir, the database or a backup holds no usable private key.

The KEK file holds one base64url key per line, the first one current; further lines are earlier KEKs still
accepted for unwrapping, which is how ``sbx keys rotate`` re-wraps without a moment in which some key cannot
be read. The broker's signing keys form a key set with ``kid``s: rotating adds a new current key and keeps
the retired ones, so old checkpoints and reports still verify (:func:`broker_keyset`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.canonical import loads_strict
from common.errors import DomainError
from vouchers import generate_private_pem, key_id, public_jwk

BROKER_KEY_FILE = "broker.pem"  # a mounted plaintext key (a Kubernetes Secret), or a pre-KEK state dir
KEYSET_FILE = "broker-keys.json"
KEYSET_FORMAT = "sbx-broker-keys/1"
KEK_BYTES = 32
_MAGIC = b"sbxwrap1"
_KEK_ID_BYTES = 8
_NONCE_BYTES = 12
#: The JWK member that marks a key as the broker's own (reports, checkpoints); issuer keys never carry it.
BROKER_ROLE_MEMBER = "sbx_role"
BROKER_ROLE = "broker"


class KekUnavailable(DomainError):
    """The key-encryption key is missing, unreadable, or not the one the stored keys were wrapped with."""

    code = "kek_unavailable"


# -- the KEK ------------------------------------------------------------------------------------------


def default_kek_path() -> Path:
    """``$XDG_CONFIG_HOME/sandbox-broker/kek`` (``~/.config/...``): the user's config dir, not the state dir."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sandbox-broker" / "kek"


def _kek_id(key: bytes) -> bytes:
    return hashlib.sha256(b"sbx-kek-id\x00" + key).digest()[:_KEK_ID_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Kek:
    """The key-encryption keys: the first wraps, all of them unwrap; re-read from ``path`` on a miss.

    A running broker re-reads the file when it meets a key wrapped under a KEK it does not hold, so
    ``sbx keys rotate`` needs no restart.
    """

    keys: list[bytes]
    path: Path | None = None
    _by_id: dict[bytes, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.keys or any(len(k) != KEK_BYTES for k in self.keys):
            raise KekUnavailable(f"a KEK is {KEK_BYTES} random bytes; the KEK file holds none or a bad one")
        self._by_id = {_kek_id(k): k for k in self.keys}

    @property
    def current_id(self) -> str:
        """Hex id of the KEK that wraps new keys (a hash; it reveals nothing of the key)."""
        return _kek_id(self.keys[0]).hex()

    def wrap(self, plaintext: bytes, *, label: str) -> bytes:
        """AES-256-GCM-encrypt ``plaintext`` under the current KEK; ``label`` (purpose and id) is bound in."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(self.keys[0]).encrypt(nonce, plaintext, _MAGIC + label.encode("utf-8"))
        return _MAGIC + _kek_id(self.keys[0]) + nonce + sealed

    def unwrap(self, blob: bytes, *, label: str) -> bytes:
        """Decrypt what :meth:`wrap` made for the same ``label``; :class:`KekUnavailable` when it cannot."""
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _KEK_ID_BYTES + _NONCE_BYTES + 16:
            raise KekUnavailable(f"the stored key {label!r} is not a wrapped key")
        rest = blob[len(_MAGIC) :]
        kid, nonce = rest[:_KEK_ID_BYTES], rest[_KEK_ID_BYTES : _KEK_ID_BYTES + _NONCE_BYTES]
        sealed = rest[_KEK_ID_BYTES + _NONCE_BYTES :]
        key = self._by_id.get(kid) or self._reload().get(kid)
        if key is None:
            raise KekUnavailable(
                f"the stored key {label!r} was wrapped with another KEK ({kid.hex()}); set SBX_KEK_FILE to the "
                "KEK this state dir and database were initialised with"
            )
        try:
            return AESGCM(key).decrypt(nonce, sealed, _MAGIC + label.encode("utf-8"))
        except InvalidTag as exc:
            raise KekUnavailable(f"the stored key {label!r} does not decrypt: altered, or moved") from exc

    def _reload(self) -> dict[bytes, bytes]:
        if self.path is not None and self.path.is_file():
            self.keys = read_kek_file(self.path)
            self._by_id = {_kek_id(k): k for k in self.keys}
        return self._by_id


def read_kek_file(path: Path) -> list[bytes]:
    """The keys of a KEK file (one base64url key per line, ``#`` comments), current first."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KekUnavailable(f"cannot read the KEK file {path}: {exc}") from exc
    try:
        keys = [_unb64(line.strip()) for line in lines if line.strip() and not line.startswith("#")]
    except ValueError as exc:
        raise KekUnavailable(f"the KEK file {path} is not base64url keys, one a line") from exc
    if not keys or any(len(k) != KEK_BYTES for k in keys):
        raise KekUnavailable(f"the KEK file {path} must hold {KEK_BYTES}-byte keys, one a line")
    return keys


def write_kek_file(path: Path, keys: Iterable[bytes]) -> None:
    """Atomically (re)write a KEK file with mode 0600, its directory 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = "# sandbox-broker key-encryption key: keep it out of the state dir and out of backups\n"
    body += "".join(_b64(k) + "\n" for k in keys)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kek-")
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def new_kek() -> bytes:
    """A fresh random KEK (CSPRNG)."""
    return secrets.token_bytes(KEK_BYTES)


def _refuse_inside(path: Path, state_dir: Path) -> None:
    resolved, state = path.resolve(), state_dir.resolve()
    if resolved == state or state in resolved.parents:
        raise KekUnavailable(
            f"the KEK file {path} is inside the state dir {state_dir}: a copy of the state would carry the key "
            "that unlocks it. Set SBX_KEK_FILE to a path outside it."
        )


def create_kek(path: Path, *, state_dir: Path) -> Path:
    """Write a new KEK to ``path`` unless one is there (never overwritten); returns ``path``."""
    _refuse_inside(path, state_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it meanwhile: use theirs
            return path
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write("# sandbox-broker key-encryption key: keep it out of the state dir and out of backups\n")
            fh.write(_b64(new_kek()) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return path


def load_kek(path: Path | None, *, production: bool, state_dir: Path) -> Kek:
    """The KEK the broker runs with. Production needs ``SBX_KEK_FILE`` naming an existing (mounted) file."""
    if production and path is None:
        raise KekUnavailable(
            "production needs SBX_KEK_FILE: the path of the key-encryption key, mounted from a Secret"
        )
    resolved = path or default_kek_path()
    _refuse_inside(resolved, state_dir)
    if not resolved.is_file():
        raise KekUnavailable(
            f"no key-encryption key at {resolved}; run `sbx init` (embedded) or mount the KEK Secret there "
            "(production). Without it the keys in the state dir and database cannot be decrypted."
        )
    return Kek(read_kek_file(resolved), resolved)


# -- the broker's signing key set ---------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerKeys:
    """The broker's signing keys: the current one (private, unwrapped in memory) and every public key."""

    current_kid: str
    current_pem: bytes = field(repr=False)
    public_by_kid: dict[str, dict[str, Any]]

    @property
    def current_jwk(self) -> dict[str, Any]:
        """The current key's public JWK."""
        return self.public_by_kid[self.current_kid]

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """Current and retired public keys as a JWK Set, each marked ``"sbx_role": "broker"``."""
        return {"keys": [{**jwk, BROKER_ROLE_MEMBER: BROKER_ROLE} for jwk in self.public_by_kid.values()]}


def _label(kid: str) -> str:
    return f"broker-key:{kid}"


def _entry(pem: bytes, kek: Kek, *, status: str, created_ms: int) -> dict[str, Any]:
    kid = key_id(pem)
    return {
        "kid": kid,
        "status": status,
        "created_ms": created_ms,
        "public_jwk": public_jwk(pem),
        "wrapped": _b64(kek.wrap(pem, label=_label(kid))),
    }


def _read_keyset(keys_dir: Path) -> dict[str, Any] | None:
    path = keys_dir / KEYSET_FILE
    if not path.exists():
        return None
    document = loads_strict(path.read_bytes())
    if not isinstance(document, dict) or document.get("format") != KEYSET_FORMAT:
        raise KekUnavailable(f"{path} is not a {KEYSET_FORMAT} key set")
    return document


def _write_keyset(keys_dir: Path, entries: list[dict[str, Any]]) -> None:
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    fd, tmp = tempfile.mkstemp(dir=keys_dir, prefix=".keys-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"format": KEYSET_FORMAT, "keys": entries}, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, keys_dir / KEYSET_FILE)


def create_broker_key(keys_dir: Path, kek: Kek, *, now_ms: int = 0) -> Path:
    """Make the key set if absent (never overwrites). A plaintext ``broker.pem`` left by an older broker is
    wrapped into it and deleted, so no private key stays readable in the state dir."""
    path = keys_dir / KEYSET_FILE
    if path.exists():
        return path
    legacy = keys_dir / BROKER_KEY_FILE
    pem = legacy.read_bytes() if legacy.exists() else generate_private_pem()
    _write_keyset(keys_dir, [_entry(pem, kek, status="current", created_ms=now_ms)])
    if legacy.exists():
        legacy.unlink()
    return path


def load_broker_keys(keys_dir: Path, kek: Kek) -> BrokerKeys:
    """The broker's keys: the wrapped key set, or else a mounted plaintext ``broker.pem`` (a Secret)."""
    document = _read_keyset(keys_dir)
    if document is None:
        mounted = keys_dir / BROKER_KEY_FILE
        if not mounted.exists():
            raise FileNotFoundError(
                f"no broker key in {keys_dir}; run `sbx init` first (or mount the key Secret there)"
            )
        pem = mounted.read_bytes()
        return BrokerKeys(key_id(pem), pem, {key_id(pem): public_jwk(pem)})
    current = [e for e in document["keys"] if e["status"] == "current"]
    if len(current) != 1:
        raise KekUnavailable(f"{keys_dir / KEYSET_FILE} must name exactly one current key")
    kid = current[0]["kid"]
    pem = kek.unwrap(_unb64(current[0]["wrapped"]), label=_label(kid))
    if key_id(pem) != kid:
        raise KekUnavailable(f"the current broker key does not match its kid {kid}")
    return BrokerKeys(kid, pem, {e["kid"]: e["public_jwk"] for e in document["keys"]})


def broker_keyset(keys_dir: Path) -> dict[str, dict[str, Any]]:
    """Public JWKs of the broker's signing keys, current and retired, by ``kid`` (no KEK needed).

    For verifiers of what the broker signed (checkpoints, reports): a signature by a retired key still
    verifies; a ``kid`` missing here is not the broker's.
    """
    document = _read_keyset(keys_dir)
    if document is not None:
        return {e["kid"]: e["public_jwk"] for e in document["keys"]}
    mounted = keys_dir / BROKER_KEY_FILE
    if mounted.exists():
        pem = mounted.read_bytes()
        return {key_id(pem): public_jwk(pem)}
    return {}


def rotate_broker_key(keys_dir: Path, kek: Kek, *, now_ms: int) -> str:
    """Make a new current broker key; the previous ones are kept as ``retired`` (they still verify)."""
    document = _read_keyset(keys_dir)
    if document is None:
        raise FileNotFoundError(f"no broker key set in {keys_dir}; run `sbx init` first")
    entries = [{**e, "status": "retired"} for e in document["keys"]]
    fresh = _entry(generate_private_pem(), kek, status="current", created_ms=now_ms)
    _write_keyset(keys_dir, [*entries, fresh])
    return str(fresh["kid"])


def rewrap_broker_keys(keys_dir: Path, old: Kek, new: Kek) -> int:
    """Re-encrypt every broker key under ``new``'s current KEK; returns how many."""
    document = _read_keyset(keys_dir)
    if document is None:
        return 0
    entries = []
    for e in document["keys"]:
        pem = old.unwrap(_unb64(e["wrapped"]), label=_label(e["kid"]))
        entries.append({**e, "wrapped": _b64(new.wrap(pem, label=_label(e["kid"])))})
    _write_keyset(keys_dir, entries)
    return len(entries)


def issuer_key_label(kid: str) -> str:
    """The associated data an issuer key is wrapped with (binds the ciphertext to its row)."""
    return f"issuer-key:{kid}"
