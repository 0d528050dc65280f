"""Reading and verifying the audit log; signing checkpoints; proofs; witness cosignatures; the ledger check."""

from __future__ import annotations

import hashlib
import logging
from functools import cached_property
from typing import Any

from sqlalchemy import Connection

from broker.audit.note import parse_vkey
from broker.container import Container
from broker.db import audit_tree, ledger_chain
from broker.db.audit import TransparencyConfig
from broker.db.orgs import Principal
from broker.services.access import read_scope, require_role
from common.errors import NotFound
from datasets.storage.base import StorageError

log = logging.getLogger("sbx.audit")


class AuditService:
    """Operators read all entries; other organisations read the entries about themselves."""

    def __init__(self, c: Container) -> None:
        self.c = c

    @cached_property
    def config(self) -> TransparencyConfig:
        """The transparency settings: origin, checkpoint interval and window, witnesses and how many are needed."""
        s = self.c.settings
        witnesses = {}
        for text in s.audit_witnesses:
            name, public, _kind = parse_vkey(text)
            witnesses[name] = public
        return TransparencyConfig(
            origin=s.audit_log_origin,
            interval_ms=s.audit_checkpoint_interval_s * 1000,
            window_ms=s.audit_checkpoint_window_s * 1000,
            witnesses=witnesses,
            required=s.audit_witnesses_required,
            log_keys=self.c.broker_keys.jwks(),
        )

    def entries(self, principal: Principal, *, after_seq: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        """Audit entries the caller may read, oldest first."""
        limit = max(1, min(limit, 1000))
        scope = read_scope(principal)
        return self.c.db.read(
            lambda conn: self.c.audit.entries(conn, org_id=scope, after_seq=after_seq, limit=limit)
        )

    def newest(self, principal: Principal, *, limit: int = 20) -> list[dict[str, Any]]:
        """The latest audit entries the caller may read, newest first (dashboards: no paging from seq 1)."""
        limit = max(1, min(limit, 1000))
        scope = read_scope(principal)
        return self.c.db.read(
            lambda conn: self.c.audit.entries(conn, org_id=scope, limit=limit, newest_first=True)
        )

    def fold_ledger(self) -> int:
        """Chain the ledger transfers made since the last fold into the log (one ``ledger.transfers`` entry)."""
        now = self.c.clock.now_ms()

        def append(conn: Connection, details: dict[str, Any]) -> int:
            return self.c.audit.append(
                conn,
                ts_ms=now,
                actor=None,
                action=ledger_chain.FOLD_ACTION,
                object_type="ledger",
                object_id=f"txn_{details['first_id']}-{details['last_id']}",
                details=details,
            )

        def tx(conn: Connection) -> int:
            if not audit_tree.holds_signer_lock(conn):  # the signer replica folds; two folds would collide
                return 0
            return ledger_chain.fold_transfers(conn, append)

        return self.c.db.write(tx)

    def checkpoint(self, principal: Principal | None) -> dict[str, Any] | None:
        """Fold the ledger, extend the tree and sign the next checkpoint (operators, and the background loop)."""
        if principal is not None:
            require_role(principal, "operator")
        now = self.c.clock.now_ms()
        self.fold_ledger()
        cp = self.c.audit.checkpoint(self.c.db, self.config, now_ms=now)
        if cp is not None:
            self._publish_checkpoint()
        # An empty log has nothing to vouch for: it is as fresh as a checkpoint made now.
        self.c.metrics.audit_health.record_checkpoint(now if cp is None else cp.ts_ms)
        if cp is None:
            return None
        return {"seq": cp.size, "tree_size": cp.size, "ts_ms": cp.ts_ms, "checkpoint": cp.render()}

    def verify(self, principal: Principal | None) -> dict[str, Any]:
        """Verify the checkpoint record, the tree, the chain and the ledger; names the first bad entry."""
        if principal is not None:
            require_role(principal, "operator")
        now = self.c.clock.now_ms()
        result = self.c.audit.verify(self.c.db, self.config.log_keys, self.config, now_ms=now)
        ledger = self.verify_ledger(None)
        ok = result.ok and ledger["ok"]
        reason = result.reason if not result.ok else ("ok" if ledger["ok"] else "; ".join(ledger["problems"]))
        self.c.metrics.audit_health.record_verification(ok=result.ok, checked=result.checked, at_ms=now)
        return {
            "ok": ok,
            "checked": result.checked,
            "first_bad_seq": result.first_bad_seq,
            "reason": reason,
            "ledger_ok": ledger["ok"],
        }

    def verify_ledger(self, principal: Principal | None) -> dict[str, Any]:
        """Balances = sum of entries, sum over accounts = 0, holds consistent, every transfer as recorded."""
        if principal is not None:
            require_role(principal, "operator")
        verdict = self.c.db.read(
            lambda conn: ledger_chain.verify_ledger(conn, self.c.ledger.check_invariants)
        )
        self.c.metrics.record_ledger_consistency(verdict.ok)
        return {
            "ok": verdict.ok,
            "transfers": verdict.transfers,
            "unfolded": verdict.unfolded,
            "problems": verdict.problems,
        }

    # -- proofs, checkpoints, witnesses ---------------------------------------------------------------
    def checkpoints(
        self, principal: Principal, *, after_seq: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Signed checkpoints with their cosignatures (anyone authenticated: they reveal no entry)."""
        limit = max(1, min(limit, 1000))
        return self.c.db.read(lambda conn: self.c.audit.checkpoints(conn, after_seq=after_seq, limit=limit))

    def latest_checkpoint(self, principal: Principal) -> dict[str, Any]:
        """The newest signed checkpoint with every cosignature received for it."""
        seq, cp = self.c.db.read(lambda conn: self.c.audit.served_checkpoint(conn))
        return {"seq": seq, "tree_size": cp.size, "time_ms": cp.ts_ms, "checkpoint": cp.render()}

    def prove(self, principal: Principal, *, seq: int, size: int | None = None) -> dict[str, Any]:
        """An entry's inclusion proof; custodians and SMEs only for entries they may read (operators all)."""

        def tx(conn: Connection) -> dict[str, Any]:
            proof = self.c.audit.prove(conn, seq, size=size)
            scope = read_scope(principal)
            entry = proof["entry"]
            if scope is not None and scope not in (entry["org_id"], entry["actor_org"]):
                raise NotFound(f"no audit entry {seq} that you may read")
            return proof

        return self.c.db.read(tx)

    def consistency(self, principal: Principal, *, old: int, new: int) -> dict[str, Any]:
        """A consistency proof between two signed tree sizes (anyone authenticated: witnesses need it)."""
        return self.c.db.read(lambda conn: self.c.audit.consistency(conn, old, new))

    def add_cosignature(
        self, principal: Principal, *, checkpoint_seq: int, cosignature: str
    ) -> dict[str, Any]:
        """Store a configured witness's cosignature on a checkpoint (the signature is the authority)."""
        now = self.c.clock.now_ms()
        stamp = self.c.db.write(
            lambda conn: self.c.audit.add_cosignature(
                conn, self.config, checkpoint_seq=checkpoint_seq, line=cosignature, now_ms=now
            )
        )
        witness = cosignature.split(" ")[1] if cosignature.count(" ") >= 2 else "unknown"
        tag = hashlib.sha256(witness.encode()).hexdigest()[:16]
        self._publish(f"audit/cosignatures/{checkpoint_seq:012d}/{tag}.sig", cosignature.encode())
        return {"checkpoint_seq": checkpoint_seq, "timestamp": stamp}

    # -- the object-store copy ------------------------------------------------------------------------
    def _publish_checkpoint(self) -> None:
        """Put the newest checkpoint's signed note in the object store (immutable: one object per seq)."""
        seq, cp = self.c.db.read(lambda conn: self.c.audit.bare_checkpoint(conn))
        self._publish(f"audit/checkpoints/{seq:012d}.note", cp.render().encode())

    def _publish(self, key: str, data: bytes) -> None:
        """One immutable object; a store that is down or already holds other bytes is logged, not fatal
        (the database and the checkpoint files remain the record)."""
        try:
            self.c.storage.put_bytes(key, data)
        except StorageError as exc:
            log.warning("audit object %s not stored: %s", key, exc.detail)
