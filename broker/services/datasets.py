"""Datasets, access requests and approvals, DP queries and the privacy-budget ledger (data foundation).

Who does what: custodians register datasets (a Parquet/CSV upload or an object already in the store under
``incoming/<their org id>/``) and decide access to *their* datasets; SMEs see every dataset's description
(schema and policy, never values), ask for access and run DP queries within their grant; operators read
everything. A foreign object is the same 404 as a missing one.

A DP query, in order (DESIGN §7):

1. validation against the public policy and the grant: every error the SME can see is decided here,
   before any data is touched (``invalid_query``, ``access_denied``, ``budget_exceeded``,
   ``insufficient_credit``);
2. one transaction: the privacy cost is reserved against the dataset total, the SME's per-dataset cap and
   the grant (conditional updates, :func:`broker.db.datasets.reserve`), a credit hold is placed for the
   query's maximum compute cost, the budget-ledger row and an audit entry are written;
3. only then the bounded version is loaded (cached in memory by version) and the batch runs on a small
   worker thread pool, off the request thread;
4. one transaction: the hold is settled at the rate-card price of the elapsed time, the ledger row records
   the outcome, an audit entry records the answer's cost (never its values). The privacy cost is never
   refunded: a run that fails after step 2 stays charged.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
from sqlalchemy import Connection

from broker.container import Container
from broker.db import datasets as repo
from broker.db import idempotency
from broker.db.jobs import current_rate_card
from broker.db.ledger import Hold
from broker.db.orgs import Principal
from broker.services.access import require_role
from broker.services.idem import replayed
from common.errors import Conflict, DomainError, InvalidInput, NotFound
from common.ids import new_id
from common.resources import Resources
from datasets import (
    AccessDenied,
    AccessStatus,
    DatasetPolicy,
    ReleaseKind,
    approve,
    check_use,
    expire_if_due,
    new_request,
    refuse,
    revoke,
)
from datasets.prepare import (
    TableFormat,
    bound_contributions,
    content_hash,
    read_bounded,
    read_table,
    schema_of,
    to_parquet_bytes,
)
from datasets.storage import dataset_key, validate_key
from privacy.budget import PrivacyCost, compose
from privacy.queries import QueryResult, QuerySpec, estimate_cost, run_queries
from quotas.ledger import HoldState
from quotas.pricing import max_cost, price

log = logging.getLogger("sbx.datasets")

QUERY_RESOURCES = Resources(milli_cpu=1000, memory_mib=1024)
"""What one DP query batch is billed for: one CPU and 1 GiB for its elapsed time."""
QUERY_MAX_RUNTIME_S = 120
"""The hold placed before a query covers this long a run; the settled price is the elapsed time's."""
MAX_QUERIES_PER_BATCH = 16
QUERY_WORKERS = 2
CACHE_BYTES = 2 * 1024**3
INCOMING_PREFIX = "incoming"


QUERY_OPERATION = "dataset.query"
_PENDING = "sbx_pending_query"
_FAILED = "sbx_failed_query"


class QueryInterrupted(DomainError):
    """The first request with this key was interrupted (a crash) after its privacy cost was reserved."""

    code = "query_interrupted"


@dataclass(frozen=True, slots=True)
class _QueryKey:
    """A DP query batch's idempotency key and the body it is bound to (what, not how, it asks)."""

    org_id: str
    key: str | None
    dataset_id: str
    version: int | None
    queries: Sequence[dict[str, Any]]

    @property
    def body(self) -> dict[str, Any]:
        """The request the key is bound to."""
        return {"dataset_id": self.dataset_id, "version": self.version, "queries": list(self.queries)}

    def claim(self, conn: Connection, charge_id: str, *, now_ms: int) -> Any | None:
        """Claim the key with a marker naming the charge (None: this request is first, or has no key)."""
        if self.key is None:
            return None
        req_hash = idempotency.request_hash(QUERY_OPERATION, self.body)
        return idempotency.claim(
            conn,
            org_id=self.org_id,
            key=self.key,
            req_hash=req_hash,
            now_ms=now_ms,
            pending={_PENDING: charge_id},
        )

    def store(self, conn: Connection, response: dict[str, Any]) -> None:
        """Record the answer for the key (same transaction as the settlement)."""
        if self.key is not None:
            idempotency.store(conn, org_id=self.org_id, key=self.key, response=response)


class QueryFailed(DomainError):
    """A query failed after its privacy cost was reserved; the cost stays charged (data may have been read)."""

    code = "query_failed"


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A bounded version ready to store: its bytes, hash, schema and row counts."""

    data: bytes
    content_hash: str
    schema: dict[str, str]
    rows_in: int
    rows_kept: int


class _FrameCache:
    """Bounded versions in memory by (dataset, version), least recently used evicted beyond a byte budget.

    Only numeric and categorical columns are kept: queries never need the privacy unit (bounding is done).
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._frames: OrderedDict[tuple[str, int], tuple[pl.DataFrame, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> pl.DataFrame | None:
        with self._lock:
            hit = self._frames.get(key)
            if hit is None:
                return None
            self._frames.move_to_end(key)
            return hit[0]

    def put(self, key: tuple[str, int], frame: pl.DataFrame) -> None:
        size = int(frame.estimated_size())
        with self._lock:
            self._frames[key] = (frame, size)
            self._frames.move_to_end(key)
            while len(self._frames) > 1 and sum(s for _f, s in self._frames.values()) > self._max:
                self._frames.popitem(last=False)


def _kinds(values: Sequence[str]) -> frozenset[ReleaseKind]:
    try:
        return frozenset(ReleaseKind(v) for v in values)
    except ValueError as exc:
        raise InvalidInput(f"release kinds must be among {[k.value for k in ReleaseKind]}") from exc


def _cost_dict(cost: PrivacyCost) -> dict[str, Any]:
    return {**cost.to_dict(), "display": cost.to_display()}


def _remaining(cap: PrivacyCost, spent: PrivacyCost) -> PrivacyCost:
    return PrivacyCost(
        max(0, cap.epsilon_micro - spent.epsilon_micro), max(0, cap.delta_e12 - spent.delta_e12)
    )


def decode_content(content_b64: str) -> bytes:
    """Decode an upload sent as standard base64; a malformed one is refused without quoting it."""
    try:
        return base64.b64decode(content_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("content_b64 is not valid base64") from exc


class DatasetService:
    """Custodians register datasets and decide access; SMEs ask and run DP queries."""

    def __init__(self, c: Container) -> None:
        self.c = c
        # Called inside the revocation's transaction (the training service cancels queued runs).
        self.on_revoked: list[Callable[[Connection, repo.RequestRow], None]] = []
        self._pool = ThreadPoolExecutor(max_workers=QUERY_WORKERS, thread_name_prefix="sbx-dp-query")
        self._cache = _FrameCache(CACHE_BYTES)
        c.closers.append(lambda: self._pool.shutdown(wait=True, cancel_futures=True))

    # -- registration -------------------------------------------------------------------------------
    def register(
        self,
        principal: Principal,
        *,
        name: str,
        description: str,
        policy: dict[str, Any],
        fmt: TableFormat,
        content: bytes | None = None,
        object_key: str | None = None,
    ) -> dict[str, Any]:
        """Register a new dataset (custodians): bound the table under its policy, store it, record version 1."""
        require_role(principal, "custodian")
        if not name.strip():
            raise InvalidInput("a dataset needs a name")
        parsed = DatasetPolicy.from_dict(policy)
        prepared = self._prepare(principal, parsed, fmt, content, object_key)
        key = self._store(prepared)
        dataset_id = new_id("ds")
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            repo.insert_dataset(
                conn,
                dataset_id=dataset_id,
                custodian_org=principal.org_id,
                name=name.strip(),
                description=description,
                total=PrivacyCost(parsed.total_epsilon_micro, parsed.total_delta_e12),
                now_ms=now,
            )
            version = self._add_version(conn, principal, dataset_id, parsed, fmt, prepared, key, now)
            self._audit(
                conn,
                principal,
                "dataset.register",
                "dataset",
                dataset_id,
                dataset_id,
                None,
                {
                    "name": name.strip(),
                    "version": version.version,
                    "content_hash": version.content_hash,
                    "policy": parsed.to_dict(),
                },
            )
            return self._describe_in(conn, principal, dataset_id)

        return self.c.db.write(tx)

    def add_version(
        self,
        principal: Principal,
        *,
        dataset_id: str,
        policy: dict[str, Any],
        fmt: TableFormat,
        content: bytes | None = None,
        object_key: str | None = None,
    ) -> dict[str, Any]:
        """Register a new version of one's dataset; earlier grants stay bound to their own version."""
        require_role(principal, "custodian")
        self._own_dataset(principal, dataset_id)
        parsed = DatasetPolicy.from_dict(policy)
        prepared = self._prepare(principal, parsed, fmt, content, object_key)
        key = self._store(prepared)
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            ds = repo.get_dataset(conn, dataset_id, lock=True)
            if ds.custodian_org != principal.org_id:
                raise NotFound(f"no dataset {dataset_id}")
            version = self._add_version(conn, principal, dataset_id, parsed, fmt, prepared, key, now)
            self._audit(
                conn,
                principal,
                "dataset.version",
                "dataset",
                dataset_id,
                dataset_id,
                None,
                {
                    "version": version.version,
                    "content_hash": version.content_hash,
                    "policy": parsed.to_dict(),
                },
            )
            return self._describe_in(conn, principal, dataset_id)

        return self.c.db.write(tx)

    def _prepare(
        self,
        principal: Principal,
        policy: DatasetPolicy,
        fmt: TableFormat,
        content: bytes | None,
        object_key: str | None,
    ) -> _Prepared:
        """Read the raw table (upload or own incoming object), bound it, serialise it; raw bytes are not kept."""
        if (content is None) == (object_key is None):
            raise InvalidInput(
                "send exactly one of content_b64 (an upload) or object_key (an object in the store)"
            )
        if fmt not in ("parquet", "csv"):
            raise InvalidInput("format must be parquet or csv")
        if object_key is not None:
            prefix = f"{INCOMING_PREFIX}/{principal.org_id}/"
            if not validate_key(object_key).startswith(prefix):
                raise NotFound(f"no object {object_key!r} under {prefix}")
            content = self.c.storage.get_bytes(object_key)
        assert content is not None
        raw = read_table(content, fmt)
        bounded = bound_contributions(raw, policy)
        data = to_parquet_bytes(bounded)
        return _Prepared(data, content_hash(data), schema_of(raw), raw.height, bounded.height)

    def _store(self, prepared: _Prepared) -> str:
        """Store the bounded version under its content-addressed key (immutable; identical re-puts are no-ops)."""
        key = dataset_key(prepared.content_hash)
        self.c.storage.put_bytes(key, prepared.data)
        return key

    def _add_version(
        self,
        conn: Connection,
        principal: Principal,
        dataset_id: str,
        policy: DatasetPolicy,
        fmt: str,
        prepared: _Prepared,
        key: str,
        now: int,
    ) -> repo.VersionRow:
        return repo.add_version(
            conn,
            version=repo.VersionRow(
                dataset_id=dataset_id,
                version=0,
                content_hash=prepared.content_hash,
                object_key=key,
                size_bytes=len(prepared.data),
                source_format=fmt,
                schema=prepared.schema,
                policy=policy,
                rows_in=prepared.rows_in,
                rows_kept=prepared.rows_kept,
                created_ms=now,
                created_by=principal.org_id,
            ),
        )

    # -- reading datasets ---------------------------------------------------------------------------
    def list_datasets(self, principal: Principal) -> list[dict[str, Any]]:
        """Datasets the caller may see: a custodian its own; SMEs and operators all (descriptions only)."""
        require_role(principal, "custodian", "sme", "operator")
        scope = principal.org_id if principal.role == "custodian" else None

        def tx(conn: Connection) -> list[dict[str, Any]]:
            return [self._summary(ds) for ds in repo.list_datasets(conn, custodian_org=scope)]

        return self.c.db.read(tx)

    def describe(self, principal: Principal, *, dataset_id: str) -> dict[str, Any]:
        """Schema, policy and versions of a dataset (never a value); budgets as the caller may see them."""
        require_role(principal, "custodian", "sme", "operator")
        return self.c.db.read(lambda conn: self._describe_in(conn, principal, dataset_id))

    def _visible_dataset(self, conn: Connection, principal: Principal, dataset_id: str) -> repo.DatasetRow:
        ds = repo.get_dataset(conn, dataset_id)
        if principal.role == "custodian" and ds.custodian_org != principal.org_id:
            raise NotFound(f"no dataset {dataset_id}")
        if principal.role not in ("custodian", "sme", "operator"):
            raise NotFound(f"no dataset {dataset_id}")
        return ds

    def _own_dataset(self, principal: Principal, dataset_id: str) -> repo.DatasetRow:
        """The dataset if the caller is its custodian (or an operator reading); else the 404 of a missing one."""
        ds = self.c.db.read(lambda conn: repo.get_dataset(conn, dataset_id))
        if principal.role != "operator" and ds.custodian_org != principal.org_id:
            raise NotFound(f"no dataset {dataset_id}")
        return ds

    @staticmethod
    def _summary(ds: repo.DatasetRow) -> dict[str, Any]:
        return {
            "id": ds.id,
            "name": ds.name,
            "description": ds.description,
            "custodian_org": ds.custodian_org,
            "latest_version": ds.latest_version,
            "created_ms": ds.created_ms,
        }

    def _describe_in(self, conn: Connection, principal: Principal, dataset_id: str) -> dict[str, Any]:
        ds = self._visible_dataset(conn, principal, dataset_id)
        steward = principal.role == "operator" or principal.org_id == ds.custodian_org
        versions = []
        for v in repo.list_versions(conn, dataset_id):
            item: dict[str, Any] = {
                "version": v.version,
                "content_hash": v.content_hash,
                "source_format": v.source_format,
                "size_bytes": v.size_bytes,
                "created_ms": v.created_ms,
                "schema": v.schema,
                "policy": v.policy.to_dict(),
            }
            if steward:
                # Exact row counts are statistics of the data: only its custodian (and operators) see them.
                item |= {"rows_in": v.rows_in, "rows_kept": v.rows_kept, "object_key": v.object_key}
            versions.append(item)
        out = self._summary(ds) | {"versions": versions}
        if steward:
            out["budget"] = {
                "total": _cost_dict(ds.total),
                "spent": _cost_dict(ds.spent),
                "remaining": _cost_dict(_remaining(ds.total, ds.spent)),
            }
        return out

    # -- access requests ----------------------------------------------------------------------------
    def request_access(
        self,
        principal: Principal,
        *,
        dataset_id: str,
        purpose: str,
        epsilon_micro: int,
        delta_e12: int = 0,
        kinds: Sequence[str] = ("query",),
        version: int | None = None,
    ) -> dict[str, Any]:
        """An SME asks for access to a dataset version (the latest by default) with a purpose and an ε."""
        require_role(principal, "sme")
        asked = _kinds(kinds)

        def tx(conn: Connection) -> dict[str, Any]:
            ds = self._visible_dataset(conn, principal, dataset_id)
            ver = repo.get_version(conn, dataset_id, version if version is not None else ds.latest_version)
            for open_req in repo.list_requests(
                conn, sme_org=principal.org_id, dataset_id=dataset_id, statuses=("pending", "approved")
            ):
                if expire_if_due(open_req.request, clock=self.c.clock).status in (
                    AccessStatus.PENDING,
                    AccessStatus.APPROVED,
                ):
                    raise Conflict(
                        f"you already have an open access request {open_req.request.request_id} on this dataset; "
                        "wait for its decision or its expiry"
                    )
            req = new_request(
                request_id=new_id("acc"),
                dataset_hash=ver.content_hash,
                sme_org=principal.org_id,
                purpose=purpose,
                epsilon_micro=epsilon_micro,
                delta_e12=delta_e12,
                kinds=asked,
                clock=self.c.clock,
            )
            repo.insert_request(
                conn,
                req=req,
                dataset_id=dataset_id,
                dataset_version=ver.version,
                custodian_org=ds.custodian_org,
            )
            self._audit(
                conn,
                principal,
                "access.request",
                "access",
                req.request_id,
                dataset_id,
                ds.custodian_org,
                {
                    "version": ver.version,
                    "purpose": req.purpose,
                    "asked": PrivacyCost(epsilon_micro, delta_e12).to_dict(),
                    "kinds": sorted(k.value for k in asked),
                },
            )
            return self._request_view(repo.get_request(conn, req.request_id))

        return self.c.db.write(tx)

    def approve(
        self,
        principal: Principal,
        *,
        request_id: str,
        valid_for_s: int,
        epsilon_micro: int | None = None,
        delta_e12: int | None = None,
        kinds: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The dataset's custodian approves a pending request, possibly with less ε or fewer release kinds."""
        require_role(principal, "custodian")
        if valid_for_s <= 0:
            raise InvalidInput("an approval must be valid for a positive number of seconds")
        granted = None if kinds is None else _kinds(kinds)

        def tx(conn: Connection) -> dict[str, Any]:
            row = self._decidable(conn, principal, request_id)
            policy = repo.get_version(conn, row.dataset_id, row.dataset_version).policy
            after = approve(
                row.request,
                policy,
                expires_ms=self.c.clock.now_ms() + valid_for_s * 1000,
                clock=self.c.clock,
                epsilon_cap_micro=epsilon_micro,
                delta_cap_e12=delta_e12,
                kinds=granted,
            )
            repo.save_decision(conn, before=row.request.status, after=after)
            repo.ensure_sme_budget(
                conn,
                dataset_id=row.dataset_id,
                sme_org=row.request.sme_org,
                cap=PrivacyCost(policy.sme_cap_epsilon_micro, policy.sme_cap_delta_e12),
            )
            grant = after.grant
            assert grant is not None
            self._audit(
                conn,
                principal,
                "access.approve",
                "access",
                request_id,
                row.dataset_id,
                row.request.sme_org,
                {
                    "granted": PrivacyCost(grant.epsilon_cap_micro, grant.delta_cap_e12).to_dict(),
                    "kinds": sorted(k.value for k in grant.kinds),
                    "expires_ms": grant.expires_ms,
                    "content_hash": grant.dataset_hash,
                },
            )
            return self._request_view(repo.get_request(conn, request_id))

        return self.c.db.write(tx)

    def refuse(self, principal: Principal, *, request_id: str, reason: str) -> dict[str, Any]:
        """The dataset's custodian refuses a pending request with a reason the SME reads."""
        return self._close_request(principal, request_id, reason, "refuse")

    def revoke(self, principal: Principal, *, request_id: str, reason: str) -> dict[str, Any]:
        """The dataset's custodian revokes an approval: no further query runs on it."""
        return self._close_request(principal, request_id, reason, "revoke")

    def _close_request(
        self, principal: Principal, request_id: str, reason: str, how: Literal["refuse", "revoke"]
    ) -> dict[str, Any]:
        require_role(principal, "custodian")
        if not reason.strip():
            raise InvalidInput(f"give the SME a reason to {how}")

        def tx(conn: Connection) -> dict[str, Any]:
            row = self._decidable(conn, principal, request_id)
            move = refuse if how == "refuse" else revoke
            after = move(row.request, reason=reason.strip(), clock=self.c.clock)
            repo.save_decision(conn, before=row.request.status, after=after)
            if how == "revoke":
                for hook in self.on_revoked:  # queued work under this approval is cancelled with it
                    hook(conn, row)
            self._audit(
                conn,
                principal,
                f"access.{how}",
                "access",
                request_id,
                row.dataset_id,
                row.request.sme_org,
                {"reason": reason.strip()},
            )
            return self._request_view(repo.get_request(conn, request_id))

        return self.c.db.write(tx)

    def _decidable(self, conn: Connection, principal: Principal, request_id: str) -> repo.RequestRow:
        """A request the caller (a custodian) may decide: on one of its own datasets; else 404."""
        row = repo.get_request(conn, request_id)
        if row.custodian_org != principal.org_id:
            raise NotFound(f"no access request {request_id}")
        return row

    def list_requests(
        self, principal: Principal, *, dataset_id: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Requests the caller may see: an SME its own, a custodian those on its datasets, operators all."""
        require_role(principal, "custodian", "sme", "operator")
        sme = principal.org_id if principal.role == "sme" else None
        custodian = principal.org_id if principal.role == "custodian" else None

        def tx(conn: Connection) -> list[dict[str, Any]]:
            rows = repo.list_requests(conn, sme_org=sme, custodian_org=custodian, dataset_id=dataset_id)
            views = [self._request_view(r) for r in rows]
            return [v for v in views if status is None or v["status"] == status]

        return self.c.db.read(tx)

    def get_request(self, principal: Principal, *, request_id: str) -> dict[str, Any]:
        """One request, visible to its SME, the dataset's custodian and operators."""
        row = self.c.db.read(lambda conn: repo.get_request(conn, request_id))
        if principal.role != "operator" and principal.org_id not in (row.request.sme_org, row.custodian_org):
            raise NotFound(f"no access request {request_id}")
        return self._request_view(row)

    def _request_view(self, row: repo.RequestRow) -> dict[str, Any]:
        req = expire_if_due(row.request, clock=self.c.clock)
        out: dict[str, Any] = {
            "id": req.request_id,
            "dataset_id": row.dataset_id,
            "dataset_version": row.dataset_version,
            "dataset_hash": req.dataset_hash,
            "sme_org": req.sme_org,
            "custodian_org": row.custodian_org,
            "purpose": req.purpose,
            "asked": _cost_dict(PrivacyCost(req.asked_epsilon_micro, req.asked_delta_e12)),
            "asked_kinds": sorted(k.value for k in req.asked_kinds),
            "status": req.status.value,
            "reason": req.reason,
            "created_ms": req.created_ms,
            "decided_ms": req.decided_ms,
            "grant": None,
        }
        if req.grant is not None:
            cap = PrivacyCost(req.grant.epsilon_cap_micro, req.grant.delta_cap_e12)
            out["grant"] = {
                "cap": _cost_dict(cap),
                "spent": _cost_dict(row.spent),
                "remaining": _cost_dict(_remaining(cap, row.spent)),
                "kinds": sorted(k.value for k in req.grant.kinds),
                "expires_ms": req.grant.expires_ms,
            }
        return out

    # -- DP queries -----------------------------------------------------------------------------------
    def query(
        self,
        principal: Principal,
        *,
        dataset_id: str,
        queries: Sequence[dict[str, Any]],
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Answer a batch of DP queries within the SME's grant (steps in the module docstring).

        With ``idempotency_key`` a retry of the same batch gets the first answer (its ``query_id`` and
        released values, never a fresh draw, charged once); the key is claimed in the reservation's
        transaction and the answer stored in the settlement's, before it is returned.
        """
        require_role(principal, "sme")
        if not 1 <= len(queries) <= MAX_QUERIES_PER_BATCH:
            raise InvalidInput(f"send 1..{MAX_QUERIES_PER_BATCH} queries in one batch")
        idem = _QueryKey(principal.org_id, idempotency_key, dataset_id, version, queries)
        earlier = replayed(
            self.c.db, org_id=idem.org_id, key=idem.key, operation=QUERY_OPERATION, body=idem.body
        )
        if earlier is not None:
            return self._replay(earlier)
        # The grant first: a caller without access learns nothing, and spends nothing, on parsing its specs.
        grant_row, ver = self.c.db.read(lambda conn: self.grant_for(conn, principal, dataset_id, version))
        specs = [QuerySpec.from_dict(q) for q in queries]
        cost = compose(estimate_cost(s, ver.policy) for s in specs)
        charge_id = new_id("qry")
        reserved = self.c.db.write(
            lambda conn: self._claim_and_reserve(
                conn, principal, grant_row, ver, specs, cost, charge_id, idem
            )
        )
        if isinstance(reserved, dict):  # a twin request with this key reserved first
            return self._replay(reserved)
        return self._answer(principal, ver, specs, cost, charge_id, reserved, idem)

    def _answer(
        self,
        principal: Principal,
        ver: repo.VersionRow,
        specs: Sequence[QuerySpec],
        cost: PrivacyCost,
        charge_id: str,
        reserved: tuple[Hold, PrivacyCost],
        idem: _QueryKey,
    ) -> dict[str, Any]:
        """Run the reserved batch off the request thread, then settle and store its answer (or failure)."""
        hold, remaining = reserved
        started = time.monotonic_ns()
        future = self._pool.submit(self._run, ver, specs)
        try:
            results = future.result()
        except Exception as exc:
            elapsed = (time.monotonic_ns() - started) // 1_000_000
            # The message may quote data: log and answer with the exception's type only.
            log.error("DP query %s on %s failed (%s)", charge_id, ver.dataset_id, type(exc).__name__)
            detail = (
                f"query {charge_id} failed while running; its privacy cost {cost.to_display()} stays charged "
                "because it was reserved before the data was read"
            )

            def failed(conn: Connection) -> None:
                self._settle(conn, principal, hold, ver, charge_id, elapsed, ok=False)
                idem.store(conn, {_FAILED: detail})

            self.c.db.write(failed)
            raise QueryFailed(detail) from None
        elapsed = (time.monotonic_ns() - started) // 1_000_000

        def answered(conn: Connection) -> dict[str, Any]:
            credits = self._settle(conn, principal, hold, ver, charge_id, elapsed, ok=True)
            answer = {
                "query_id": charge_id,
                "dataset_id": ver.dataset_id,
                "dataset_version": ver.version,
                "results": [r.to_dict() for r in results],
                "charged": _cost_dict(cost),
                "grant_remaining": _cost_dict(remaining),
                "credits": credits,
                "elapsed_ms": elapsed,
            }
            idem.store(conn, answer)
            return answer

        return self.c.db.write(answered)

    def _replay(self, earlier: dict[str, Any]) -> dict[str, Any]:
        """What a retry with a used key gets: the stored answer, the stored failure, or the state of the
        first request's charge (still running: 409 ``query_in_progress``; interrupted: 409)."""
        if _FAILED in earlier:
            raise QueryFailed(str(earlier[_FAILED]))
        if _PENDING not in earlier:
            return earlier
        charge_id = str(earlier[_PENDING])
        charge = self.c.db.read(lambda conn: repo.get_charge(conn, charge_id))
        if charge["status"] == "reserved":
            raise Conflict(
                f"query {charge_id} sent with this key is still running; retry shortly",
                code="query_in_progress",
            )
        raise QueryInterrupted(
            f"query {charge_id} sent with this key was interrupted by a broker failure before it answered; "
            "its privacy cost stays charged (the data may have been read); send a new key to ask again"
        )

    def grant_for(
        self,
        conn: Connection,
        principal: Principal,
        dataset_id: str,
        version: int | None,
        kind: ReleaseKind = ReleaseKind.QUERY,
    ) -> tuple[repo.RequestRow, repo.VersionRow]:
        """The SME's approved grant on this dataset (for ``kind`` of release) and the version it runs on, or
        AccessDenied; also used by the training service."""
        ds = self._visible_dataset(conn, principal, dataset_id)
        approved = repo.list_requests(
            conn, sme_org=principal.org_id, dataset_id=ds.id, statuses=(AccessStatus.APPROVED.value,)
        )
        if not approved:
            raise AccessDenied(
                "you have no approved access to this dataset; ask with `sbx access request` and wait for approval"
            )
        row = approved[-1]
        ver = repo.get_version(conn, ds.id, version if version is not None else row.dataset_version)
        check_use(
            row.request,
            dataset_hash=ver.content_hash,
            sme_org=principal.org_id,
            kind=kind,
            clock=self.c.clock,
        )
        return row, ver

    def _claim_and_reserve(
        self,
        conn: Connection,
        principal: Principal,
        row: repo.RequestRow,
        ver: repo.VersionRow,
        specs: Sequence[QuerySpec],
        cost: PrivacyCost,
        charge_id: str,
        idem: _QueryKey,
    ) -> tuple[Hold, PrivacyCost] | dict[str, Any]:
        """Claim the idempotency key (a twin that claimed it first wins: its marker or answer is returned
        and nothing is reserved), then reserve, in one transaction."""
        earlier = idem.claim(conn, charge_id, now_ms=self.c.clock.now_ms())
        if earlier is not None:
            return dict(earlier)
        return self._reserve(conn, principal, row, ver, specs, cost, charge_id)

    def _reserve(
        self,
        conn: Connection,
        principal: Principal,
        row: repo.RequestRow,
        ver: repo.VersionRow,
        specs: Sequence[QuerySpec],
        cost: PrivacyCost,
        charge_id: str,
    ) -> tuple[Hold, PrivacyCost]:
        """One transaction: privacy budgets, the credit hold, the ledger row and the audit entry."""
        now = self.c.clock.now_ms()
        current = repo.get_request(conn, row.request.request_id)
        check_use(
            current.request,
            dataset_hash=ver.content_hash,
            sme_org=principal.org_id,
            kind=ReleaseKind.QUERY,
            clock=self.c.clock,
        )
        repo.reserve(
            conn,
            dataset_id=ver.dataset_id,
            sme_org=principal.org_id,
            request_id=row.request.request_id,
            cost=cost,
        )
        card = current_rate_card(conn)
        hold = self.c.ledger.place_hold(
            conn,
            org_id=principal.org_id,
            amount=max(1, max_cost(QUERY_RESOURCES, QUERY_MAX_RUNTIME_S, card)),
            resource_classes=frozenset({"cpu", "memory"}),
            job_id=charge_id,
            now_ms=now,
            expires_ms=now + self.c.settings.hold_ttl_s * 1000,
        )
        spec_dicts = [s.to_dict() for s in specs]
        repo.insert_charge(
            conn,
            charge_id=charge_id,
            dataset_id=ver.dataset_id,
            dataset_version=ver.version,
            request_id=row.request.request_id,
            sme_org=principal.org_id,
            kind="query",
            cost=cost,
            spec=spec_dicts,
            hold_id=hold.id,
            rate_card_version=card.version,
            now_ms=now,
        )
        after = repo.get_request(conn, row.request.request_id)
        grant = after.request.grant
        assert grant is not None
        remaining = _remaining(PrivacyCost(grant.epsilon_cap_micro, grant.delta_cap_e12), after.spent)
        self._audit(
            conn,
            principal,
            "query.reserve",
            "query",
            charge_id,
            ver.dataset_id,
            row.custodian_org,
            {
                "request_id": row.request.request_id,
                "version": ver.version,
                "charged": cost.to_dict(),
                "grant_remaining": remaining.to_dict(),
                "queries": spec_dicts,
                "hold_id": hold.id,
                "rate_card_version": card.version,
            },
        )
        return hold, remaining

    def _run(self, ver: repo.VersionRow, specs: Sequence[QuerySpec]) -> list[QueryResult]:
        """Load the bounded version (from the cache or the store) and answer the batch (a worker thread)."""
        return run_queries(specs, ver.policy, self._frame(ver))

    def _frame(self, ver: repo.VersionRow) -> pl.DataFrame:
        key = (ver.dataset_id, ver.version)
        frame = self._cache.get(key)
        if frame is None:
            frame = read_bounded(self.c.storage.get_bytes(ver.object_key), ver.policy).drop(
                ver.policy.privacy_unit
            )
            self._cache.put(key, frame)
        return frame

    def _settle(
        self,
        conn: Connection,
        principal: Principal,
        hold: Hold,
        ver: repo.VersionRow,
        charge_id: str,
        elapsed_ms: int,
        *,
        ok: bool,
    ) -> int:
        """Bill the elapsed compute at the hold's rate card; record the outcome (the ε stays spent). A run
        that outlived its deadline and was closed as interrupted meanwhile answers ``query_interrupted``."""
        if repo.get_charge(conn, charge_id)["status"] != "reserved":
            raise QueryInterrupted(
                f"query {charge_id} ran past its deadline and was closed as interrupted; its privacy cost "
                "stays charged; send a new key to ask again"
            )
        now = self.c.clock.now_ms()
        card = current_rate_card(conn)
        credits = min(hold.amount, price(QUERY_RESOURCES, max(0, elapsed_ms), card))
        self.c.ledger.close(conn, hold=hold, target=HoldState.SETTLED, cost=credits, now_ms=now)
        status = "answered" if ok else "failed"
        repo.finish_charge(
            conn, charge_id=charge_id, status=status, credits=credits, elapsed_ms=elapsed_ms, now_ms=now
        )
        ds = repo.get_dataset(conn, ver.dataset_id)
        self._audit(
            conn,
            None,
            f"query.{status}",
            "query",
            charge_id,
            ver.dataset_id,
            principal.org_id,
            {
                "credits": credits,
                "elapsed_ms": elapsed_ms,
                "hold_id": hold.id,
                "custodian_org": ds.custodian_org,
            },
        )
        return credits

    # -- reconciliation of interrupted work ---------------------------------------------------------------
    def reconcile_interrupted(self, *, limit: int = 100) -> int:
        """Close DP query charges still ``reserved`` past their deadline (their process died between the
        reservation and the settlement): on start and in the background loop. Returns how many were closed.

        The ε stays spent (the data may have been read); the credit hold is released (what ran is unknown,
        so nothing is billed); the charge becomes ``interrupted`` with an audit entry the SME and the
        custodian can read, and a retry with the query's key answers ``query_interrupted``.
        """
        now = self.c.clock.now_ms()
        cutoff = now - self.c.settings.query_deadline_s * 1000
        stale = self.c.db.read(
            lambda conn: repo.stale_charges(conn, kind="query", created_before_ms=cutoff, limit=limit)
        )
        closed = 0
        for charge in stale:
            closed += self.c.db.write(functools.partial(self._interrupt, charge=charge, now=now))
        return closed

    def _interrupt(self, conn: Connection, *, charge: repo.StaleCharge, now: int) -> int:
        """One transaction: mark the charge interrupted (once: a concurrent closer wins), release its hold."""
        try:
            repo.finish_charge(
                conn, charge_id=charge.id, status="interrupted", credits=0, elapsed_ms=None, now_ms=now
            )
        except Conflict:
            return 0  # settled or closed meanwhile (another replica, or the run itself)
        released = 0
        if charge.hold_id is not None:
            hold = self.c.ledger.get_hold(conn, hold_id=charge.hold_id, org_id=charge.sme_org, lock=True)
            if hold.state is HoldState.HELD:
                self.c.ledger.close(conn, hold=hold, target=HoldState.RELEASED, cost=0, now_ms=now)
                released = hold.amount
        custodian = repo.get_dataset(conn, charge.dataset_id).custodian_org
        self._audit(
            conn,
            None,
            "query.interrupted",
            "query",
            charge.id,
            charge.dataset_id,
            charge.sme_org,
            {
                "charged": charge.cost.to_dict(),
                "reserved_ms": charge.created_ms,
                "hold_id": charge.hold_id,
                "released": released,
                "custodian_org": custodian,
            },
        )
        log.warning("DP query %s was interrupted before it answered; closed (ε stays spent)", charge.id)
        return 1

    # -- DP training (for the jobs workflow) ---------------------------------------------------------
    # -- budgets and audit --------------------------------------------------------------------------
    def budget(self, principal: Principal, *, dataset_id: str) -> dict[str, Any]:
        """The budget ledger of a dataset: custodians and operators see all, an SME its own grants and charges."""
        require_role(principal, "custodian", "sme", "operator")

        def tx(conn: Connection) -> dict[str, Any]:
            ds = self._visible_dataset(conn, principal, dataset_id)
            if principal.role == "sme":
                cap, spent = repo.sme_budget(conn, dataset_id=dataset_id, sme_org=principal.org_id)
                grants = repo.list_requests(conn, sme_org=principal.org_id, dataset_id=dataset_id)
                return {
                    "dataset_id": dataset_id,
                    "sme_cap": {"cap": _cost_dict(cap), "spent": _cost_dict(spent)},
                    "grants": [self._request_view(g) for g in grants if g.request.grant is not None],
                    "charges": repo.list_charges(conn, dataset_id=dataset_id, sme_org=principal.org_id),
                }
            return {
                "dataset_id": dataset_id,
                "total": _cost_dict(ds.total),
                "spent": _cost_dict(ds.spent),
                "remaining": _cost_dict(_remaining(ds.total, ds.spent)),
                "smes": repo.sme_budgets(conn, dataset_id=dataset_id),
                "charges": repo.list_charges(conn, dataset_id=dataset_id),
            }

        return self.c.db.read(tx)

    def audit_entries(
        self, principal: Principal, *, dataset_id: str, after_seq: int = 0, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Audit entries of one dataset, for its custodian and operators."""
        require_role(principal, "custodian", "operator")
        self._own_dataset(principal, dataset_id)
        limit = max(1, min(limit, 1000))
        return self.c.db.read(
            lambda conn: self.c.audit.entries(
                conn, dataset_ids=[dataset_id], after_seq=after_seq, limit=limit
            )
        )

    def _audit(
        self,
        conn: Connection,
        actor: Principal | None,
        action: str,
        object_type: str,
        object_id: str,
        dataset_id: str,
        org_id: str | None,
        details: dict[str, Any],
    ) -> None:
        """Append an entry in the caller's transaction (``org_id``: the other party, who may read it)."""
        self.c.audit.append(
            conn,
            ts_ms=self.c.clock.now_ms(),
            actor=actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            org_id=org_id,
            dataset_id=dataset_id,
            details=json.loads(json.dumps(details)),
        )
