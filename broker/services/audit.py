"""Reading and verifying the audit log; writing signed checkpoints."""

from __future__ import annotations

from typing import Any

from broker.container import Container
from broker.db.orgs import Principal
from broker.services.access import read_scope, require_role


class AuditService:
    """Operators read all entries; other organisations read the entries about themselves."""

    def __init__(self, c: Container) -> None:
        self.c = c

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

    def checkpoint(self, principal: Principal | None) -> dict[str, Any] | None:
        """Sign the current head into the checkpoint file (operators, and the background loop)."""
        if principal is not None:
            require_role(principal, "operator")
        now = self.c.clock.now_ms()
        cp = self.c.db.read(lambda conn: self.c.audit.checkpoint(conn, now_ms=now))
        # An empty log has nothing to vouch for: it is as fresh as a checkpoint made now.
        self.c.metrics.audit_health.record_checkpoint(now if cp is None else cp.ts_ms)
        return None if cp is None else {"seq": cp.seq, "entry_hash": cp.entry_hash, "ts_ms": cp.ts_ms}

    def verify(self, principal: Principal | None) -> dict[str, Any]:
        """Verify the whole chain against the checkpoints; names the first bad entry."""
        if principal is not None:
            require_role(principal, "operator")
        result = self.c.audit.verify(self.c.db, self.c.broker_public_jwk)
        self.c.metrics.audit_health.record_verification(
            ok=result.ok, checked=result.checked, at_ms=self.c.clock.now_ms()
        )
        return {
            "ok": result.ok,
            "checked": result.checked,
            "first_bad_seq": result.first_bad_seq,
            "reason": result.reason,
        }
