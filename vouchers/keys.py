"""Ed25519 keys: generation, JWK/JWKS export, RFC 7638 key ids, detached signatures.

Used by voucher issuers (signing vouchers) and by the broker itself (audit checkpoints, signed reports).
Private keys travel as PKCS#8 PEM bytes (what is stored on disk, mode 0600, or mounted as a Secret);
public keys travel as JWK dicts (what is published in ``/.well-known/jwks.json``). JWK handling is
joserfc's; the raw signature primitive is ``cryptography``'s.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc.jwk import OKPKey

from vouchers.errors import KeyFormatError

#: The JWS ``alg`` we put in published JWKs and emit in vouchers (see ``vouchers.tokens``).
DEFAULT_ALG = "EdDSA"
_SIGNATURE_BYTES = 64
_PUBLIC_KEY_BYTES = 32


def b64url_encode(data: bytes) -> str:
    """Encode bytes as unpadded base64url (RFC 7515 §2), the JOSE text form of binary values."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly: refuses padding, whitespace and non-alphabet characters."""
    if not isinstance(text, str) or not text.isascii() or "=" in text:
        raise ValueError("not an unpadded base64url string")
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("not an unpadded base64url string") from exc
    if b64url_encode(raw) != text:  # non-canonical trailing bits: two texts must not decode alike
        raise ValueError("non-canonical base64url string")
    return raw


def generate_private_pem() -> bytes:
    """Generate a new Ed25519 private key as unencrypted PKCS#8 PEM (store it with mode 0600)."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private(private_pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError("not a PEM-encoded unencrypted private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError("the private key is not Ed25519; generate one with generate_private_pem()")
    return key


def _load_public(pem: bytes) -> Ed25519PublicKey:
    """Return the public key of a private or public PEM."""
    if b"PRIVATE KEY" in pem:
        return _load_private(pem).public_key()
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError("not a PEM-encoded public or private key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFormatError("the public key is not an Ed25519 key")
    return key


def key_id(pem: bytes) -> str:
    """Return the RFC 7638 JWK thumbprint (SHA-256, base64url) of a private or public Ed25519 PEM.

    A thumbprint is derived from the public key alone, so issuer and verifier agree on it without
    coordination, and a rotated key always gets a new id.
    """
    return str(OKPKey.import_key(_load_public(pem)).thumbprint())


def public_jwk(private_or_public_pem: bytes, *, alg: str = DEFAULT_ALG) -> dict[str, str]:
    """Return the public JWK (``kty`` OKP, ``crv`` Ed25519) with ``kid`` (thumbprint), ``use`` and ``alg``.

    Never contains the private part ``d``, whichever PEM is given.
    """
    okp = OKPKey.import_key(_load_public(private_or_public_pem))
    jwk = {str(k): str(v) for k, v in okp.as_dict(private=False).items()}
    jwk.update({"kid": str(okp.thumbprint()), "use": "sig", "alg": alg})
    return jwk


def public_key_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """Build the Ed25519 public key a JWK describes, refusing anything else (other curves, private JWKs).

    Raises :class:`KeyFormatError`; used wherever a stored or published JWK is turned back into a key.
    """
    if not isinstance(jwk, Mapping):
        raise KeyFormatError("a JWK must be a JSON object")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise KeyFormatError("the JWK is not an Ed25519 key (need kty=OKP, crv=Ed25519)")
    if "d" in jwk:
        raise KeyFormatError("refusing a JWK that contains a private key ('d'); publish public keys only")
    x = jwk.get("x")
    try:
        raw = b64url_decode(x) if isinstance(x, str) else b""
    except ValueError as exc:
        raise KeyFormatError("the JWK's 'x' is not base64url") from exc
    if len(raw) != _PUBLIC_KEY_BYTES:
        raise KeyFormatError("the JWK's 'x' is not a 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign_bytes(private_pem: bytes, data: bytes) -> str:
    """Sign ``data`` with an Ed25519 private key; return the detached signature as base64url text."""
    return b64url_encode(_load_private(private_pem).sign(data))


def verify_bytes(public_jwk: Mapping[str, Any], data: bytes, signature: str) -> bool:
    """Return whether ``signature`` (base64url, from :func:`sign_bytes`) signs ``data`` under the JWK.

    A malformed signature is simply ``False``; a JWK that is not an Ed25519 public key raises
    :class:`KeyFormatError` (that is a configuration error, not a forgery).
    """
    key = public_key_from_jwk(public_jwk)
    try:
        raw = b64url_decode(signature)
    except ValueError:
        return False
    if len(raw) != _SIGNATURE_BYTES:
        return False
    try:
        key.verify(raw, data)
    except InvalidSignature:
        return False
    return True


def jwks(public_jwks: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Return a JWK Set (``{"keys": [...]}``) of public keys, refusing any JWK with a private part."""
    keys: list[dict[str, Any]] = []
    for jwk in public_jwks:
        public_key_from_jwk(jwk)  # validates: Ed25519, no 'd'
        keys.append(dict(jwk))
    return {"keys": keys}
