"""Voucher tokens: compact JWS (a JWT signed with Ed25519), issued and verified with joserfc.

Which ``alg`` we emit — a recorded decision
    We emit ``alg: "EdDSA"`` by default. RFC 9864 (2025) deprecates the polymorphic ``EdDSA`` in favour of
    the fully specified ``Ed25519``, but ``EdDSA`` is what every deployed JOSE library understands today
    (PyJWT 2.15 knows only ``EdDSA``), and a voucher must be checkable by the funder's and the SME's own
    tools. Issuers may pass ``alg="Ed25519"``. Verification accepts exactly these two names, and only with
    an Ed25519 key: ``none``, HMAC (including HS256 "signed" with the public key bytes — algorithm
    confusion), RSA, ECDSA and Ed448 are refused as ``invalid_signature``.

Order of checks in :func:`verify_voucher` (nothing in the payload is trusted before the signature holds)
    size → compact structure and header (``malformed``) → ``alg`` (``invalid_signature``) → ``kid``
    (``malformed``) → key lookup (``unknown_key``) → signature (``invalid_signature``) → claims
    (``malformed``) → key's issuer is the token's ``iss`` (``unknown_key``) → key status (``revoked``) →
    ``nbf``/``exp`` (``not_yet_valid``/``expired``) → ``sub`` (``wrong_beneficiary``).
    A *retired* key still verifies what it signed; a *revoked* key verifies nothing.
    Voucher-level revocation and ``already_redeemed`` are decided by the database layer, with the codes
    :data:`REVOKED` and :data:`ALREADY_REDEEMED`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from joserfc import jws
from joserfc.errors import JoseError, UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry

from common.canonical import loads_strict
from vouchers.claims import VoucherClaims
from vouchers.errors import (
    ALREADY_REDEEMED,
    EXPIRED,
    INVALID_SIGNATURE,
    MALFORMED,
    NOT_YET_VALID,
    REVOKED,
    UNKNOWN_KEY,
    WRONG_BENEFICIARY,
    InvalidVoucherClaims,
    KeyFormatError,
    VoucherRefused,
)
from vouchers.keys import b64url_decode, public_key_from_jwk

__all__ = [
    "ACCEPTED_ALGS",
    "ALREADY_REDEEMED",
    "MAX_TOKEN_BYTES",
    "REVOKED",
    "IssuerKey",
    "KeyStatus",
    "sign_voucher",
    "verify_signed",
    "verify_voucher",
]

#: The JWS algorithm names accepted for an Ed25519 key (RFC 8037 and RFC 9864 spellings).
ACCEPTED_ALGS: tuple[str, ...] = ("EdDSA", "Ed25519")
#: Tokens longer than this are refused unread (a real voucher is ~500 bytes).
MAX_TOKEN_BYTES = 8 * 1024
_HEADER_NAMES = frozenset({"alg", "kid", "typ"})
_MAX_KID_LENGTH = 256

KeyStatus = Literal["active", "retired", "revoked"]
_STATUSES: frozenset[str] = frozenset({"active", "retired", "revoked"})


class _Ed25519Registry(JWSRegistry):
    """A joserfc registry that knows only our two algorithm names.

    It also skips joserfc's deprecation warning for ``EdDSA``: the choice is recorded above, and the
    project runs with warnings as errors.
    """

    # The whole token is already capped at MAX_TOKEN_BYTES; per-part caps would only turn a wrong-alg
    # signature (RSA is 342 characters) into "malformed" instead of "invalid_signature".
    max_header_length = MAX_TOKEN_BYTES
    max_payload_length = MAX_TOKEN_BYTES
    max_signature_length = MAX_TOKEN_BYTES

    def get_alg(self, name: str) -> JWSAlgModel:
        """Return the algorithm model for ``name`` if it is one of :data:`ACCEPTED_ALGS`."""
        if name not in ACCEPTED_ALGS:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


_REGISTRY = _Ed25519Registry(algorithms=list(ACCEPTED_ALGS))


@dataclass(frozen=True, slots=True)
class IssuerKey:
    """A published issuer key as the key store knows it: which issuer owns it, and whether it may verify."""

    kid: str
    issuer: str
    public_jwk: dict[str, Any] = field(hash=False)
    status: KeyStatus

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ValueError(f"key status must be one of {sorted(_STATUSES)}, got {self.status!r}")


def _refuse(code: str, detail: str) -> VoucherRefused:
    return VoucherRefused(code, detail)


def sign_voucher(claims: VoucherClaims, private_pem: bytes, kid: str, *, alg: str = "EdDSA") -> str:
    """Sign ``claims`` as a compact JWS (header ``{"alg", "kid", "typ": "JWT"}``) with an Ed25519 key.

    ``alg`` is ``"EdDSA"`` (default, widest support) or ``"Ed25519"`` (RFC 9864). Raises ``ValueError``
    for another alg or an empty kid, :class:`KeyFormatError` for a key that is not Ed25519.
    """
    if alg not in ACCEPTED_ALGS:
        raise ValueError(f"alg must be one of {ACCEPTED_ALGS}, got {alg!r}")
    if not kid or len(kid) > _MAX_KID_LENGTH:
        raise ValueError("kid must be a non-empty string of at most 256 characters")
    try:
        key = OKPKey.import_key(private_pem)
    except (JoseError, ValueError, TypeError) as exc:
        raise KeyFormatError("not a PEM-encoded Ed25519 private key") from exc
    if key.curve_name != "Ed25519" or not key.is_private:
        raise KeyFormatError("vouchers are signed with an Ed25519 private key")
    payload = json.dumps(claims.to_json_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8")
    header = {"alg": alg, "kid": kid, "typ": "JWT"}
    return jws.serialize_compact(header, payload, key, registry=_REGISTRY)


def _parse(token: str) -> jws.CompactSignature:
    """Split and decode the compact JWS; refuse anything structurally wrong as ``malformed``."""
    if not isinstance(token, str):
        raise _refuse(MALFORMED, "a voucher must be given as text (a compact JWS: three base64url parts)")
    if len(token) > MAX_TOKEN_BYTES:
        raise _refuse(MALFORMED, f"the voucher is {len(token)} characters; the limit is {MAX_TOKEN_BYTES}")
    if not token.isascii() or token.count(".") != 2:
        raise _refuse(MALFORMED, "this is not a voucher: expected a compact JWS (three base64url parts)")
    try:
        loads_strict(b64url_decode(token.split(".", 1)[0]))  # a header naming 'alg' twice is not a voucher
        obj = jws.extract_compact(token.encode("ascii"), registry=_REGISTRY)
    except (JoseError, ValueError, TypeError, RecursionError) as exc:
        raise _refuse(MALFORMED, "this is not a voucher: its header or payload does not decode") from exc
    if not isinstance(obj.protected, dict):
        raise _refuse(MALFORMED, "this is not a voucher: its header is not a JSON object")
    return obj


def _check_header(header: dict[str, Any]) -> str:
    """Check ``alg`` then the header's names and ``kid``; return the kid."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ACCEPTED_ALGS:
        raise _refuse(
            INVALID_SIGNATURE,
            f"the voucher is signed with alg {alg!r}; only Ed25519 signatures ({', '.join(ACCEPTED_ALGS)}) "
            "are accepted. Ask the issuer for a properly signed voucher.",
        )
    unknown = set(header) - _HEADER_NAMES
    if unknown:
        raise _refuse(MALFORMED, f"the voucher header has unsupported fields {sorted(unknown)}")
    typ = header.get("typ", "JWT")
    if not isinstance(typ, str) or typ.upper() != "JWT":
        raise _refuse(MALFORMED, f"the voucher header has typ {typ!r}; expected 'JWT'")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_LENGTH:
        raise _refuse(MALFORMED, "the voucher header names no key id ('kid'); the issuer must set it")
    return kid


def _lookup(kid: str, key_lookup: Callable[[str], IssuerKey | None]) -> tuple[IssuerKey, OKPKey]:
    issuer_key = key_lookup(kid)
    if issuer_key is None or issuer_key.kid != kid:
        raise _refuse(
            UNKNOWN_KEY,
            f"the voucher was signed with key {kid!r}, which no registered issuer owns. "
            "Ask the issuer to register the key or re-issue the voucher with a registered key.",
        )
    try:
        public = public_key_from_jwk(issuer_key.public_jwk)
    except KeyFormatError as exc:
        raise _refuse(UNKNOWN_KEY, f"key {kid!r} is registered but is not a usable Ed25519 key") from exc
    return issuer_key, OKPKey.import_key(public)


def _verify_signature(obj: jws.CompactSignature, key: OKPKey) -> None:
    try:
        valid = jws.validate_compact(obj, key, registry=_REGISTRY)
    except (JoseError, ValueError, TypeError) as exc:
        raise _refuse(INVALID_SIGNATURE, "the voucher's signature could not be checked") from exc
    if not valid:
        raise _refuse(
            INVALID_SIGNATURE,
            "the voucher's signature does not match its content: it was altered or not signed by this key. "
            "Use the voucher exactly as the issuer sent it.",
        )


def _claims(payload: bytes) -> VoucherClaims:
    try:
        return VoucherClaims.from_json_dict(loads_strict(payload))
    except InvalidVoucherClaims as exc:
        raise _refuse(MALFORMED, f"the voucher is signed but its claims are invalid: {exc.detail}") from exc
    except (ValueError, TypeError, RecursionError) as exc:
        raise _refuse(MALFORMED, "the voucher is signed but its payload is not a JSON claim set") from exc


def _check_key(claims: VoucherClaims, issuer_key: IssuerKey) -> None:
    """The key must belong to the token's issuer and must not be revoked."""
    if issuer_key.issuer != claims.iss:
        raise _refuse(
            UNKNOWN_KEY,
            f"the voucher claims issuer {claims.iss!r} but key {issuer_key.kid!r} belongs to another issuer",
        )
    if issuer_key.status == "revoked":
        raise _refuse(
            REVOKED,
            f"the key {issuer_key.kid!r} that signed this voucher has been revoked; ask {claims.iss!r} "
            "for a new voucher",
        )


def _check_validity(claims: VoucherClaims, *, beneficiary: str, now_s: int) -> None:
    if now_s < claims.nbf:
        raise _refuse(NOT_YET_VALID, f"the voucher is valid from {claims.nbf} (epoch s); it is now {now_s}")
    if now_s >= claims.exp:
        raise _refuse(EXPIRED, f"the voucher expired at {claims.exp} (epoch s); it is now {now_s}")
    if claims.sub != beneficiary:
        raise _refuse(
            WRONG_BENEFICIARY,
            f"the voucher was issued to organisation {claims.sub!r}, not to {beneficiary!r}; "
            "only its beneficiary can redeem it",
        )


def verify_voucher(
    token: str, *, key_lookup: Callable[[str], IssuerKey | None], beneficiary: str, now_s: int
) -> VoucherClaims:
    """Verify a voucher token for redemption by ``beneficiary`` at ``now_s``; return its claims.

    ``key_lookup(kid)`` returns the registered issuer key or ``None``. Raises :class:`VoucherRefused`
    (and nothing else, whatever the input) with the codes and in the order described in this module.
    """
    claims, _ = verify_signed(token, key_lookup=key_lookup)
    _check_validity(claims, beneficiary=beneficiary, now_s=now_s)
    return claims


def verify_signed(
    token: str, *, key_lookup: Callable[[str], IssuerKey | None]
) -> tuple[VoucherClaims, IssuerKey]:
    """Check a token's structure, key and signature (not its dates or beneficiary); return claims and key.

    The first half of :func:`verify_voucher`, used on its own when an issuer registers a voucher it signed
    offline. Raises :class:`VoucherRefused` as :func:`verify_voucher` does.
    """
    obj = _parse(token)
    kid = _check_header(obj.protected)
    issuer_key, key = _lookup(kid, key_lookup)
    _verify_signature(obj, key)
    claims = _claims(obj.payload)
    _check_key(claims, issuer_key)
    return claims, issuer_key
