"""Issuer keys, voucher issuance, redemption into credit grants, revocation."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection

from broker.container import Container
from broker.db import orgs, vouchers
from broker.db.orgs import Principal
from broker.keys import issuer_key_label
from broker.services.access import read_scope, require_role, visible
from broker.services.idem import write_idempotent
from common.errors import Conflict, DomainError, InvalidInput, NotFound
from common.ids import new_id
from vouchers import (
    ALREADY_REDEEMED,
    EXPIRED,
    MALFORMED,
    REVOKED,
    VoucherClaims,
    VoucherRefused,
    check_issuance,
    check_matches_record,
    check_redemption,
    generate_private_pem,
    jwks,
    key_id,
    public_jwk,
    public_key_from_jwk,
    sign_voucher,
    token_sha256,
    unknown_voucher,
    verify_signed,
    verify_voucher,
)


def budget_year(conn: Connection, issuer_org: str, ts_s: int) -> int:
    """The budget year ``ts_s`` (a voucher's ``nbf``, epoch seconds) counts against: the calendar year in the
    programme's time zone (a voucher valid from 1 January 00:30 Beijing time counts in that year, not the
    last one as in UTC). Programmes without a zone of their own keep UTC, as :func:`vouchers.year_of`."""
    zone = vouchers.get_programme(conn, issuer_org).time_zone
    return datetime.fromtimestamp(ts_s, tz=ZoneInfo(zone)).year


class VoucherService:
    """Everything an issuer does with keys and vouchers, and an SME's redemption."""

    def __init__(self, c: Container) -> None:
        self.c = c

    # -- keys -------------------------------------------------------------------------------------
    def create_key(self, principal: Principal) -> dict[str, Any]:
        """Generate a new signing key for the calling issuer; earlier active keys retire (rotation)."""
        require_role(principal, "issuer")
        pem = generate_private_pem()
        kid = key_id(pem)
        wrapped = self.c.kek.wrap(pem, label=issuer_key_label(kid))
        return self._add_key(principal, public_jwk(pem), wrapped)

    def register_key(self, principal: Principal, *, jwk: dict[str, Any]) -> dict[str, Any]:
        """Record the calling issuer's own Ed25519 public key (JWK); the private key never reaches the broker.

        Only ``kty``, ``crv`` and ``x`` are taken from the JWK; ``kid`` is its RFC 7638 thumbprint, so the
        issuer's tools and the broker agree on it. Earlier active keys retire, as with :meth:`create_key`.
        """
        require_role(principal, "issuer")
        public = public_key_from_jwk(jwk)  # KeyFormatError for anything but a public Ed25519 JWK
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        given = jwk.get("kid")
        if given is not None and given != key_id(pem):
            raise InvalidInput(f"the JWK's kid {given!r} is not its RFC 7638 thumbprint {key_id(pem)!r}")
        return self._add_key(principal, public_jwk(pem), None)

    def _add_key(self, principal: Principal, jwk: dict[str, Any], wrapped: bytes | None) -> dict[str, Any]:
        kid = str(jwk["kid"])
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            vouchers.add_key(
                conn, org_id=principal.org_id, kid=kid, public_jwk=jwk, private_wrapped=wrapped, now_ms=now
            )
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="key.create",
                object_type="key",
                object_id=kid,
                org_id=principal.org_id,
                details={"held_by": "broker" if wrapped is not None else "issuer"},
            )
            return {"kid": kid, "status": "active", "public_jwk": jwk}

        return self.c.db.write(tx)

    def set_key_status(self, principal: Principal, *, kid: str, status: str) -> dict[str, Any]:
        """Retire (old vouchers still verify) or revoke (nothing it signed verifies) an issuer key."""
        require_role(principal, "issuer", "operator")
        if status not in ("retired", "revoked"):
            raise InvalidInput("a key can be set to 'retired' or 'revoked'")
        scope = read_scope(principal)
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            vouchers.set_key_status(conn, org_id=scope, kid=kid, status=status, now_ms=now)  # type: ignore[arg-type]
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action=f"key.{status}",
                object_type="key",
                object_id=kid,
                org_id=scope,
                details={},
            )
            return {"kid": kid, "status": status}

        return self.c.db.write(tx)

    def signing_key_of(self, conn: Connection, org_id: str) -> tuple[str, bytes]:
        """The issuer's active key id and private PEM, for vouchers the broker signs on its behalf."""
        kid, wrapped = vouchers.signing_key(conn, org_id)
        return kid, self.c.kek.unwrap(wrapped, label=issuer_key_label(kid))

    def list_keys(self, principal: Principal) -> list[dict[str, Any]]:
        """The caller's keys (operators: all)."""
        require_role(principal, "issuer", "operator")
        scope = read_scope(principal)
        return self.c.db.read(lambda conn: vouchers.list_keys(conn, org_id=scope))

    def jwks(self) -> dict[str, Any]:
        """Public keys that verify vouchers (active and retired issuer keys) plus the broker's own key."""
        keys = self.c.db.read(lambda conn: vouchers.list_keys(conn))
        published = [k["public_jwk"] for k in keys if k["status"] != "revoked"]
        published.extend(self.c.broker_keys.jwks()["keys"])  # marked "sbx_role": "broker"
        return jwks(published)

    # -- issuance ---------------------------------------------------------------------------------
    def issue(
        self,
        principal: Principal,
        *,
        sme_org: str,
        credits: int,
        coverage_bps: int,
        resources: tuple[str, ...],
        valid_from_s: int | None,
        valid_until_s: int,
        credit_expires_s: int,
    ) -> dict[str, Any]:
        """Sign a voucher for an SME, within the programme's yearly budget and per-SME cap."""
        require_role(principal, "issuer")
        now = self.c.clock.now_ms()
        nbf = valid_from_s if valid_from_s is not None else now // 1000
        jti = new_id("vch")
        claims = VoucherClaims(
            jti=jti,
            iss=principal.org_id,
            sub=sme_org,
            nbf=nbf,
            exp=valid_until_s,
            credits=credits,
            coverage_bps=coverage_bps,
            resources=tuple(sorted(resources)),
            credit_exp=credit_expires_s,
            iat=now // 1000,
        )

        def tx(conn: Connection) -> dict[str, Any]:
            self._check_issuance(conn, claims)
            year = budget_year(conn, principal.org_id, nbf)
            kid, pem = self.signing_key_of(conn, principal.org_id)
            token = sign_voucher(claims, pem, kid)
            vouchers.record_voucher(
                conn, claims=claims, kid=kid, year=year, now_ms=now, token_sha256=token_sha256(token)
            )
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="voucher.issue",
                object_type="voucher",
                object_id=jti,
                org_id=sme_org,
                details={"credits": credits, "coverage_bps": coverage_bps, "kid": kid},
            )
            return {"jti": jti, "token": token, "kid": kid, "claims": _claims_dict(claims)}

        return self.c.db.write(tx)

    def register(self, principal: Principal, *, token: str) -> dict[str, Any]:
        """Record a voucher the issuer signed offline with its own registered key (``sbx voucher sign``).

        Checked like an issued voucher: the signature against the issuer's registered key, the beneficiary
        is an SME, and the programme's budget and per-SME cap. Only a registered voucher can be redeemed.
        Registering the same token again returns the record; another token for a known ``jti`` is
        ``voucher_mismatch``.
        """
        require_role(principal, "issuer")
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            claims, key = verify_signed(token, key_lookup=lambda kid: vouchers.lookup_key(conn, kid))
            if claims.iss != principal.org_id:
                raise InvalidInput(f"the voucher names issuer {claims.iss!r}; you are {principal.org_id!r}")
            if claims.exp <= now // 1000:
                raise VoucherRefused(EXPIRED, f"the voucher expired at {claims.exp} (epoch s)")
            existing = vouchers.get_voucher(conn, claims.jti)
            if existing is not None:
                check_matches_record(
                    token, claims, recorded_sha256=existing.token_sha256, recorded_claims=existing.claims
                )
                return {
                    "jti": claims.jti,
                    "kid": key.kid,
                    "claims": _claims_dict(claims),
                    "registered": False,
                }
            self._check_issuance(conn, claims)
            vouchers.record_voucher(
                conn,
                claims=claims,
                kid=key.kid,
                year=budget_year(conn, claims.iss, claims.nbf),
                now_ms=now,
                token_sha256=token_sha256(token),
                origin="issuer",
            )
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="voucher.register",
                object_type="voucher",
                object_id=claims.jti,
                org_id=claims.sub,
                details={"credits": claims.credits, "coverage_bps": claims.coverage_bps, "kid": key.kid},
            )
            return {"jti": claims.jti, "kid": key.kid, "claims": _claims_dict(claims), "registered": True}

        return self.c.db.write(tx)

    @staticmethod
    def _check_issuance(conn: Connection, claims: VoucherClaims) -> None:
        """The beneficiary is an SME, and the voucher fits the programme's year budget and per-SME cap."""
        sme = orgs.get_org(conn, claims.sub)
        if sme.role != "sme":
            raise InvalidInput(f"{claims.sub} is a {sme.role}; vouchers are issued to SMEs")
        programme = vouchers.get_programme(conn, claims.iss)
        year_total, sme_total = vouchers.issued_totals(
            conn, issuer_org=claims.iss, sme_org=claims.sub, year=budget_year(conn, claims.iss, claims.nbf)
        )
        check_issuance(
            amount=claims.credits,
            programme_year_budget=programme.year_budget,
            issued_this_year=year_total,
            sme_cap=programme.sme_cap,
            issued_to_sme_total=sme_total,
        )

    def revoke(self, principal: Principal, *, jti: str) -> dict[str, Any]:
        """Revoke an unredeemed voucher (its issuer or an operator)."""
        require_role(principal, "issuer", "operator")
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            record = vouchers.get_voucher(conn, jti)
            if record is None or not visible(principal, record.issuer_org):
                raise NotFound(f"no voucher {jti}")
            if record.status == "revoked":
                return {"jti": jti, "status": "revoked"}
            if not vouchers.mark(conn, jti=jti, from_status="issued", to_status="revoked", now_ms=now):
                raise Conflict(
                    f"voucher {jti} was already redeemed; it can no longer be revoked", code=ALREADY_REDEEMED
                )
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="voucher.revoke",
                object_type="voucher",
                object_id=jti,
                org_id=record.sme_org,
                details={},
            )
            return {"jti": jti, "status": "revoked"}

        return self.c.db.write(tx)

    def show(self, principal: Principal, *, jti: str) -> dict[str, Any]:
        """A voucher record, visible to its issuer, its beneficiary and operators."""
        record = self.c.db.read(lambda conn: vouchers.get_voucher(conn, jti))
        if record is None or not visible(principal, record.issuer_org, record.sme_org):
            raise NotFound(f"no voucher {jti}")
        return asdict(record)

    def list(self, principal: Principal) -> list[dict[str, Any]]:
        """Vouchers the caller issued (issuer), received (SME), or all (operator)."""

        def tx(conn: Connection) -> list[vouchers.VoucherRecord]:
            if principal.role == "issuer":
                return vouchers.list_vouchers(conn, issuer_org=principal.org_id)
            if principal.role == "sme":
                return vouchers.list_vouchers(conn, sme_org=principal.org_id)
            require_role(principal, "operator")
            return vouchers.list_vouchers(conn)

        return [asdict(r) for r in self.c.db.read(tx)]

    # -- redemption -------------------------------------------------------------------------------
    def redeem(self, principal: Principal, *, token: str, idempotency_key: str | None) -> dict[str, Any]:
        """Verify a voucher and turn it into a credit grant for the calling SME, in one transaction.

        Refusals carry the codes of :mod:`vouchers.errors`; a second redemption is ``already_redeemed``
        unless it repeats the first request's idempotency key, which returns the first result.
        """
        require_role(principal, "sme")
        if len(token.encode()) > self.c.settings.max_token_bytes:
            raise VoucherRefused(
                MALFORMED,
                f"the token is {len(token.encode())} bytes; vouchers are at most {self.c.settings.max_token_bytes}",
            )
        now = self.c.clock.now_ms()
        try:
            result, fresh = write_idempotent(
                self.c.db,
                org_id=principal.org_id,
                key=idempotency_key,
                operation="voucher.redeem",
                body={"token": token},
                now_ms=now,
                fn=lambda conn: self._redeem_in(conn, principal, token, now),
            )
        except DomainError as exc:
            self.c.metrics.voucher_refusals.labels(code=exc.code).inc()
            raise
        if fresh:
            self.c.metrics.credits_redeemed.inc(result["grant"]["amount"])
        return result

    def _redeem_in(self, conn: Connection, principal: Principal, token: str, now: int) -> dict[str, Any]:
        presented = verify_voucher(
            token,
            key_lookup=lambda kid: vouchers.lookup_key(conn, kid),
            beneficiary=principal.org_id,
            now_s=now // 1000,
        )
        record = vouchers.get_voucher(conn, presented.jti)
        if record is None:
            raise unknown_voucher(presented.jti)
        claims = check_matches_record(
            token, presented, recorded_sha256=record.token_sha256, recorded_claims=record.claims
        )
        if record.status == "revoked":
            raise VoucherRefused(REVOKED, f"voucher {claims.jti} was revoked by its issuer")
        self._check_limits_at_redemption(conn, claims)
        if not vouchers.mark(conn, jti=claims.jti, from_status="issued", to_status="redeemed", now_ms=now):
            # Lost a race: say what won it (a revocation committed meanwhile, or another redemption).
            winner = vouchers.get_voucher(conn, claims.jti)
            if winner is not None and winner.status == "revoked":
                raise VoucherRefused(REVOKED, f"voucher {claims.jti} was revoked by its issuer")
            raise VoucherRefused(ALREADY_REDEEMED, f"voucher {claims.jti} was already redeemed")
        grant = self.c.ledger.create_grant(
            conn,
            org_id=principal.org_id,
            issuer_org=claims.iss,
            voucher_jti=claims.jti,
            amount=claims.credits,
            coverage_bps=claims.coverage_bps,
            resources=claims.resources,
            expires_ms=claims.credit_exp * 1000,
            now_ms=now,
        )
        self.c.audit.append(
            conn,
            ts_ms=now,
            actor=principal,
            action="voucher.redeem",
            object_type="voucher",
            object_id=claims.jti,
            org_id=principal.org_id,
            details={"grant_id": grant.id, "credits": claims.credits},
        )
        return {"grant": _grant_dict(grant), "voucher": _claims_dict(claims)}

    @staticmethod
    def _check_limits_at_redemption(conn: Connection, claims: VoucherClaims) -> None:
        """The programme's year budget and per-SME cap bound the credit granted, whatever the records say."""
        programme = vouchers.get_programme(conn, claims.iss, lock=True)
        year_total, sme_total = vouchers.redeemed_totals(
            conn, issuer_org=claims.iss, sme_org=claims.sub, year=budget_year(conn, claims.iss, claims.nbf)
        )
        check_redemption(
            amount=claims.credits,
            programme_year_budget=programme.year_budget,
            redeemed_this_year=year_total,
            sme_cap=programme.sme_cap,
            redeemed_by_sme_total=sme_total,
        )


def _claims_dict(claims: VoucherClaims) -> dict[str, Any]:
    out = asdict(claims)
    out["resources"] = list(claims.resources)
    return out


def _grant_dict(grant: Any) -> dict[str, Any]:
    out = asdict(grant)
    out["resources"] = list(grant.resources)
    return out
