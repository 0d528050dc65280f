"""Signatures on reports mean one thing: "the broker's report key signed this subsidy (or access) report".

A signed report is a JWS in the flattened JSON serialisation with a detached payload (RFC 7515 §7.2.2 and
Appendix F): ``{"report": {...}, "signature": {"protected": ..., "signature": ...}}``. The payload is the
canonical JSON (:func:`common.canonical.canonical_json`) of ``report``; the protected header is exactly
``{"alg": "EdDSA", "kid": <broker key>, "typ": <literal>}``. Any JOSE library verifies it.

What a verifier checks, and why
    * ``typ`` is the literal for the report's ``format``: :data:`SUBSIDY_TYP` (``sbx-subsidy-report+jws``)
      or :data:`ACCESS_TYP`. The header is signed, so a signature made for anything else (a checkpoint, a
      voucher, a data-access report) cannot be passed off as a subsidy report.
    * ``kid`` names one of the broker's own keys: a JWK marked ``"sbx_role": "broker"`` in the published
      JWKS (current and retired broker keys; issuer keys never carry it), and, when the verifier pinned
      kids (``--kid``), one of those. An issuer key is refused even though the JWKS lists it.
    * the document is parsed with :func:`common.canonical.loads_strict`: a duplicated member (two
      ``"totals"``) is refused rather than read last-wins.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from common.canonical import canonical_json, loads_strict
from common.errors import DomainError
from vouchers.keys import b64url_decode, b64url_encode, sign_bytes, verify_bytes

SIGNATURE_ALG = "EdDSA"
_ACCEPTED_ALGS = frozenset({"EdDSA", "Ed25519"})
SUBSIDY_TYP = "sbx-subsidy-report+jws"
ACCESS_TYP = "sbx-data-access-report+jws"
TYP_BY_FORMAT = {"sbx-subsidy-report/1": SUBSIDY_TYP, "sbx-data-access-report/1": ACCESS_TYP}
_BROKER_ROLE = ("sbx_role", "broker")


class ReportSignatureInvalid(DomainError):
    """A report's signature does not verify (changed after signing, or not signed by the broker's key)."""

    code = "report_signature_invalid"


def _signing_input(protected: str, report: Mapping[str, Any]) -> bytes:
    try:
        payload = canonical_json(report)
    except (TypeError, ValueError) as exc:
        raise ReportSignatureInvalid(f"the report is not canonical JSON: {exc}") from exc
    return f"{protected}.{b64url_encode(payload)}".encode("ascii")


def sign_report(report: dict[str, Any], *, key_pem: bytes, kid: str) -> dict[str, Any]:
    """Wrap ``report`` with the broker's detached JWS over its canonical JSON bytes, ``typ`` by format."""
    typ = TYP_BY_FORMAT.get(str(report.get("format")))
    if typ is None:
        raise ValueError(f"no signature type for report format {report.get('format')!r}")
    header = {"alg": SIGNATURE_ALG, "kid": kid, "typ": typ}
    protected = b64url_encode(canonical_json(header))
    return {
        "report": report,
        "signature": {
            "protected": protected,
            "signature": sign_bytes(key_pem, _signing_input(protected, report)),
        },
    }


def load_report(raw: bytes | str) -> dict[str, Any]:
    """Parse a signed report file strictly (duplicate members refused); :class:`ReportSignatureInvalid`."""
    try:
        document = loads_strict(raw)
    except (ValueError, RecursionError) as exc:
        raise ReportSignatureInvalid(f"the document is not JSON a verifier can trust: {exc}") from exc
    if not isinstance(document, dict):
        raise ReportSignatureInvalid("the document is not a JSON object")
    return document


def load_jwks(raw: bytes | str) -> dict[str, Any]:
    """Parse a JWK Set strictly (a key set with a duplicated member is refused)."""
    try:
        keys = loads_strict(raw)
    except (ValueError, RecursionError) as exc:
        raise ReportSignatureInvalid(f"the JWKS is not JSON a verifier can trust: {exc}") from exc
    if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
        raise ReportSignatureInvalid("the JWKS is not a JSON object with a 'keys' list")
    return keys


def _header(signature: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    protected = signature.get("protected")
    if set(signature) != {"protected", "signature"} or not isinstance(protected, str):
        raise ReportSignatureInvalid(
            "the signature must be a detached JWS {'protected', 'signature'} (reports signed before key "
            "purposes were pinned carry no typ: ask the broker to sign the report again)"
        )
    try:
        header = loads_strict(b64url_decode(protected))
    except ValueError as exc:
        raise ReportSignatureInvalid(f"the signature's protected header does not decode: {exc}") from exc
    if not isinstance(header, dict) or set(header) != {"alg", "kid", "typ"}:
        raise ReportSignatureInvalid("the protected header must hold exactly alg, kid and typ")
    if header["alg"] not in _ACCEPTED_ALGS:
        raise ReportSignatureInvalid(f"the signature must be Ed25519 (EdDSA), not {header['alg']!r}")
    return protected, header


def _broker_key(jwks: Mapping[str, Any], kid: object, pinned: Collection[str] | None) -> Mapping[str, Any]:
    if pinned is not None and kid not in pinned:
        raise ReportSignatureInvalid(
            f"the report was signed by key {kid!r}, not one of the pinned {sorted(pinned)}"
        )
    named = [k for k in jwks.get("keys", []) if isinstance(k, Mapping) and k.get("kid") == kid]
    if not named:
        raise ReportSignatureInvalid(f"no key {kid!r} in the JWKS; fetch the broker's /.well-known/jwks.json")
    broker = [k for k in named if (k.get(_BROKER_ROLE[0]) == _BROKER_ROLE[1])]
    if not broker:
        raise ReportSignatureInvalid(
            f"key {kid!r} is not the broker's report key (it is an issuer's voucher key): reports are signed "
            "only by the broker"
        )
    return broker[0]


def verify_report(
    document: Mapping[str, Any], jwks: Mapping[str, Any], *, pinned_kids: Collection[str] | None = None
) -> dict[str, Any]:
    """Check a signed report against the broker's keys in a JWK Set; return ``{"ok", "kid", "kind", "typ"}``.

    Raises :class:`ReportSignatureInvalid` saying why: not a detached JWS, a ``typ`` that is not this
    report format's, a key that is not the broker's (or not pinned), bytes changed after signing.
    """
    signature, report = document.get("signature"), document.get("report")
    if set(document) != {"report", "signature"} or not isinstance(signature, Mapping):
        raise ReportSignatureInvalid("the document must hold exactly 'report' and 'signature'")
    if not isinstance(report, dict):
        raise ReportSignatureInvalid("the document's 'report' is not a JSON object")
    protected, header = _header(signature)
    expected = TYP_BY_FORMAT.get(str(report.get("format")))
    if expected is None or header["typ"] != expected:
        raise ReportSignatureInvalid(
            f"the signature's typ {header['typ']!r} does not name this report's format {report.get('format')!r}"
        )
    key = _broker_key(jwks, header["kid"], pinned_kids)
    value = signature["signature"]
    if not isinstance(value, str) or not verify_bytes(key, _signing_input(protected, report), value):
        raise ReportSignatureInvalid("the signature does not match the report: it was changed after signing")
    return {"ok": True, "kid": header["kid"], "kind": report.get("format"), "typ": header["typ"]}


def signature_header(document: Mapping[str, Any]) -> dict[str, Any]:
    """The protected header of a signed report, decoded for display (``alg``, ``kid``, ``typ``), NOT verified.

    Empty when the document carries no readable header; use :func:`verify_report` to trust anything.
    """
    signature = document.get("signature")
    try:
        header = loads_strict(b64url_decode(signature["protected"])) if isinstance(signature, Mapping) else {}
    except (KeyError, TypeError, ValueError):
        return {}
    return header if isinstance(header, dict) else {}
