"""C2SP signed notes, tlog checkpoints and tlog cosignatures (Ed25519): building, parsing, signing, verifying.

Pure (no I/O), so the standalone proof verifier and the witness use exactly this code.

- signed note (c2sp.org/signed-note): a text ending in a newline, a blank line, then signature lines
  ``— <key name> base64(key ID || signature)``; the Ed25519 key ID is
  ``SHA-256(key name || 0x0A || 0x01 || public key)[:4]`` and the signature covers the text.
- checkpoint (c2sp.org/tlog-checkpoint): the text is ``<origin>\\n<tree size>\\n<base64 root>\\n`` plus
  extension lines. Ours carry one, ``time <unix ms>``, so a checkpoint's freshness is signed too.
- cosignature (c2sp.org/tlog-cosignature, v1): key ID ``SHA-256(name || 0x0A || 0x04 || public key)[:4]``,
  signature ``key ID || u64 big-endian timestamp (s) || Ed25519 over "cosignature/v1\\ntime <t>\\n" + text``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.errors import InvalidInput

SIG_ED25519 = 0x01
SIG_COSIGNATURE_V1 = 0x04
DASH = "\u2014"  # em dash: the start of every signature line
MAX_SIGNATURES = 64
MAX_NOTE_BYTES = 64 * 1024
_NAME = re.compile(r"[^\s+]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


class NoteError(InvalidInput):
    """A signed note or checkpoint that is malformed (never produced by the broker or a witness)."""

    code = "malformed_checkpoint"


@dataclass(frozen=True, slots=True)
class SignatureLine:
    """One signature line of a signed note: the key's name, its 4-byte ID and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def render(self) -> str:
        """The line as it appears in the note (with its newline)."""
        return f"{DASH} {self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A note's text (ending in a newline) and its signature lines."""

    text: str
    signatures: tuple[SignatureLine, ...]

    def render(self) -> str:
        """The whole note: text, blank line, signature lines."""
        return self.text + "\n" + "".join(s.render() for s in self.signatures)


@dataclass(frozen=True, slots=True)
class TreeHead:
    """What a checkpoint's text says: the log's origin, its size, root hash and signed time (unix ms)."""

    origin: str
    size: int
    root: bytes
    time_ms: int

    def text(self) -> str:
        """The checkpoint text (note body) for this tree head."""
        root = base64.b64encode(self.root).decode()
        return f"{self.origin}\n{self.size}\n{root}\ntime {self.time_ms}\n"


def key_id(name: str, public: Ed25519PublicKey, sig_type: int = SIG_ED25519) -> bytes:
    """The C2SP key ID: ``SHA-256(name || 0x0A || sig_type || 32-byte public key)[:4]``."""
    raw = public.public_bytes_raw()
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + raw).digest()[:4]


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")


def sign_text(text: str, name: str, private: Ed25519PrivateKey) -> SignatureLine:
    """An Ed25519 note signature (type 0x01) over ``text`` by the key called ``name``."""
    _check_name(name)
    return SignatureLine(name, key_id(name, private.public_key()), private.sign(text.encode()))


def verify_line(text: str, line: SignatureLine, name: str, public: Ed25519PublicKey) -> bool:
    """Whether ``line`` is a valid Ed25519 note signature over ``text`` by (``name``, ``public``)."""
    if line.name != name or line.key_id != key_id(name, public) or len(line.signature) != 64:
        return False
    try:
        public.verify(line.signature, text.encode())
    except InvalidSignature:
        return False
    return True


def cosignature_message(text: str, timestamp_s: int) -> bytes:
    """What a v1 cosignature signs: two header lines, then the checkpoint text."""
    return f"cosignature/v1\ntime {timestamp_s}\n{text}".encode()


def cosign(text: str, name: str, private: Ed25519PrivateKey, timestamp_s: int) -> SignatureLine:
    """A witness's timestamped cosignature (type 0x04) over the checkpoint ``text``."""
    _check_name(name)
    if not 0 <= timestamp_s < 2**63:
        raise NoteError("a cosignature timestamp must be within 0 .. 2^63 - 1")
    signature = private.sign(cosignature_message(text, timestamp_s))
    kid = key_id(name, private.public_key(), SIG_COSIGNATURE_V1)
    return SignatureLine(name, kid, struct.pack(">Q", timestamp_s) + signature)


def verify_cosignature(text: str, line: SignatureLine, name: str, public: Ed25519PublicKey) -> int | None:
    """The timestamp (s) of a valid cosignature by (``name``, ``public``) over ``text``; ``None`` otherwise."""
    if line.name != name or line.key_id != key_id(name, public, SIG_COSIGNATURE_V1):
        return None
    if len(line.signature) != 8 + 64:
        return None
    (timestamp_s,) = struct.unpack(">Q", line.signature[:8])
    if timestamp_s >= 2**63:
        return None
    try:
        public.verify(line.signature[8:], cosignature_message(text, timestamp_s))
    except InvalidSignature:
        return None
    return int(timestamp_s)


def parse_signature_line(raw: str) -> SignatureLine:
    """Read one ``— name base64`` line (without its newline)."""
    parts = raw.split(" ")
    if len(parts) != 3 or parts[0] != DASH:
        raise NoteError("a signature line is '— <key name> <base64 signature>'")
    _check_name(parts[1])
    try:
        blob = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError("a signature is not base64") from exc
    if len(blob) < 5:
        raise NoteError("a signature is shorter than its key ID")
    return SignatureLine(parts[1], blob[:4], blob[4:])


def parse_note(note: str) -> SignedNote:
    """Split a signed note into its text and signature lines (the text ends at the last blank line)."""
    if len(note.encode()) > MAX_NOTE_BYTES or not note.endswith("\n"):
        raise NoteError("a signed note is at most 64 KiB and ends with a newline")
    if any(ord(ch) < 0x20 and ch != "\n" for ch in note):
        raise NoteError("a signed note holds no control characters but newlines")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("a signed note has a blank line between its text and its signatures")
    text, lines = note[: cut + 1], note[cut + 2 :].split("\n")[:-1]
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a signed note carries 1 .. {MAX_SIGNATURES} signatures")
    return SignedNote(text, tuple(parse_signature_line(line) for line in lines))


def parse_tree_head(text: str) -> TreeHead:
    """Read a checkpoint text written by :meth:`TreeHead.text` (origin, size, root, ``time`` line)."""
    lines = text.split("\n")
    if len(lines) != 5 or lines[4] != "":
        raise NoteError("a checkpoint text is origin, size, root hash and a 'time <ms>' line")
    origin, size, root, time_line = lines[:4]
    if not origin or not _DECIMAL.fullmatch(size):
        raise NoteError("a checkpoint's origin is non-empty and its size a decimal without leading zeroes")
    try:
        root_hash = base64.b64decode(root, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError("a checkpoint's root hash is not base64") from exc
    stamp = time_line.removeprefix("time ")
    if len(root_hash) != 32 or stamp == time_line or not _DECIMAL.fullmatch(stamp):
        raise NoteError("a checkpoint's root hash is 32 bytes and its extension line 'time <ms>'")
    return TreeHead(origin, int(size), root_hash, int(stamp))


def public_key(raw: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from its 32 raw bytes (``NoteError`` otherwise)."""
    if len(raw) != 32:
        raise NoteError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def vkey(name: str, public: Ed25519PublicKey, sig_type: int = SIG_ED25519) -> str:
    """The note verifier-key string ``<name>+<hex key ID>+<base64(type || key)>`` (how witnesses are named)."""
    blob = bytes([sig_type]) + public.public_bytes_raw()
    return f"{name}+{key_id(name, public, sig_type).hex()}+{base64.b64encode(blob).decode()}"


def parse_vkey(text: str) -> tuple[str, Ed25519PublicKey, int]:
    """Read a verifier key written by :func:`vkey`: ``(name, public key, signature type)``."""
    parts = text.strip().split("+", 2)  # the base64 key may itself hold "+"
    if len(parts) != 3:
        raise NoteError("a verifier key is <name>+<hex key ID>+<base64 key>")
    name, hex_id, b64 = parts
    _check_name(name)
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError("a verifier key's key is not base64") from exc
    if len(blob) != 33 or blob[0] not in (SIG_ED25519, SIG_COSIGNATURE_V1):
        raise NoteError("a verifier key holds an Ed25519 key of type 0x01 or 0x04")
    public = public_key(blob[1:])
    if key_id(name, public, blob[0]).hex() != hex_id:
        raise NoteError("a verifier key's ID does not match its name and key")
    return name, public, blob[0]
