"""Background loops of a running broker: reconciliation, admission, the reaper (expired grants and holds),
audit checkpoints and the periodic audit verification that feeds the audit-health metrics.

Each loop body is one short transaction, safe to run on several replicas at once (conditional updates and
``SKIP LOCKED`` make every expiry happen exactly once). Later features register more loop bodies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from broker.services.idem import purge_expired
from broker.services.maintenance import integrity_pass
from broker.services.registry import Services

log = logging.getLogger("sbx.loops")


class _SideThread:
    """Runs a long body (a full audit verification) off the loop thread, one run at a time, so admission
    and reconciliation never wait for it; a kick while a run is in progress is skipped."""

    def __init__(self, name: str, body: Callable[[], object]) -> None:
        self._name, self._body = name, body
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        """Start a run unless one is still going."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        """Wait for a run in progress (shutdown must not close the database under it)."""
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        try:
            self._body()
        except Exception:
            log.exception("background task %s failed", self._name)


class BackgroundLoops:
    """Runs each registered body every ``interval_ms`` on one thread until stopped."""

    def __init__(self, services: Services, *, interval_ms: int) -> None:
        self.services = services
        self.interval_s = interval_ms / 1000
        settings = services.container.settings
        self._verifier = _SideThread("sbx-audit-verify", lambda: services.audit.verify(None))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # (name, body, run every N rounds)
        self.bodies: list[tuple[str, Callable[[], object], int]] = [
            ("backend-watch", services.jobs.watch_backend, 1),
            ("reconcile", services.jobs.reconcile_pass, 1),
            ("admission", services.jobs.admission_pass, 1),
            ("reaper", services.ledger.reap, 10),
            ("job-files", services.jobs.expire_files_pass, 120),
            ("privacy-reconcile", services.datasets.reconcile_interrupted, self._rounds(30)),
            ("idempotency-retention", self._purge_keys, self._rounds(3600)),
            (
                "integrity",
                lambda: integrity_pass(services.container),
                self._rounds(settings.integrity_check_interval_s),
            ),
            (
                "audit-checkpoint",
                lambda: services.audit.checkpoint(None),
                self._rounds(settings.audit_checkpoint_interval_s),
            ),
            (
                "audit-verify",
                self._verifier.kick,
                self._rounds(settings.audit_verify_interval_s),
            ),
        ]
        self._round = 0
        self._wake = threading.Event()
        services.jobs.wakeup = self.wake

    def _purge_keys(self) -> int:
        """Forget idempotency keys past their retention (``SBX_IDEMPOTENCY_RETENTION_S``)."""
        c = self.services.container
        return purge_expired(c.db, now_ms=c.clock.now_ms(), retention_s=c.settings.idempotency_retention_s)

    def _rounds(self, every_s: int) -> int:
        """How many rounds make ``every_s`` seconds (at least one)."""
        return max(1, round(every_s / self.interval_s))

    def start(self) -> None:
        """Start the loop thread."""
        self._thread = threading.Thread(target=self._run, name="sbx-loops", daemon=True)
        self._thread.start()

    def run_once(self) -> None:
        """Run one round: every body due this round (all of them in the first round)."""
        self._round += 1
        for name, body, every in self.bodies:
            if self._round % every and self._round != 1:
                continue
            try:
                body()
            except Exception:  # a loop must survive one bad round; the next round retries
                log.exception("background loop %s failed", name)

    def wake(self) -> None:
        """Run a round now instead of at the next tick (a job was submitted: admit it at once)."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the loop to stop and wait for the round in progress to finish."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._verifier.join(timeout_s=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.run_once()
