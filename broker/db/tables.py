"""The schema (SQLAlchemy Core). Alembic migrations in ``broker/db/migrations`` create it on both dialects.

Amounts are ``BigInteger`` credits; times are ``BigInteger`` milliseconds since the epoch; identifiers are
short prefixed strings (``org_…``, ``job_…``) except ledger accounts, which are integers so that rows can
be locked in a fixed (ascending) order.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

organisations = Table(
    "organisations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # Legal identity (0010): the GB 32100-2015 unified social credit code (common.uscc), the registered
    # Chinese name and an optional English one; the organisation's language for what it is shown (zh-CN, en).
    Column("uscc", String(18), nullable=True, unique=True),
    Column("name_zh", String(200), nullable=True),
    Column("name_en", String(200), nullable=True),
    Column("locale", String(10), nullable=True),
    CheckConstraint("role IN ('operator','issuer','custodian','sme')", name="role"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("secret_hash", String(64), nullable=False),
    Column("label", String(200), nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
)

programmes = Table(
    "programmes",
    metadata,
    Column("org_id", String(40), ForeignKey("organisations.id"), primary_key=True),
    Column("year_budget", BigInteger, nullable=False),
    Column("sme_cap", BigInteger, nullable=False),
    # 0010: amounts are the currency's smallest unit (fen for CNY); NULL is a currency-less "credits"
    # programme. Report periods, year budgets and expiry dates are in ``time_zone`` (IANA), stored as UTC.
    Column("currency", String(3), nullable=True),
    Column("time_zone", String(64), nullable=False, server_default="UTC"),
    Column("default_locale", String(10), nullable=True),
    CheckConstraint("year_budget >= 0 AND sme_cap >= 0", name="non_negative"),
)

issuer_keys = Table(
    "issuer_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("org_id", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("public_jwk", Text, nullable=False),
    # The private key when the broker generated it, AES-GCM-wrapped under the KEK (broker/keys.py, 0008);
    # NULL for a key the issuer registered and holds itself.
    Column("private_wrapped", LargeBinary, nullable=True),
    Column("status", String(10), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("changed_ms", BigInteger, nullable=False),
    CheckConstraint("status IN ('active','retired','revoked')", name="status"),
)

vouchers = Table(
    "vouchers",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("issuer_org", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("sme_org", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("kid", String(64), nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("coverage_bps", Integer, nullable=False),
    Column("resources", String(64), nullable=False),
    Column("nbf", BigInteger, nullable=False),
    Column("exp", BigInteger, nullable=False),
    Column("credit_exp", BigInteger, nullable=False),
    Column("year", Integer, nullable=False),
    Column("issued_ms", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),
    Column("changed_ms", BigInteger, nullable=False),
    # The issued record a redemption is checked against (0008): the token's SHA-256 (NULL only for vouchers
    # issued before 0008), its claims as canonical JSON, and who signed it ('broker' or the 'issuer' offline).
    Column("token_sha256", String(64), nullable=True),
    Column("claims", Text, nullable=False),
    Column("origin", String(10), nullable=False, server_default="broker"),
    CheckConstraint("status IN ('issued','redeemed','revoked')", name="status"),
    CheckConstraint("origin IN ('broker','issuer')", name="origin"),
    CheckConstraint("credits > 0", name="credits_positive"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(12), nullable=False),
    Column("org_id", String(40), ForeignKey("organisations.id"), nullable=False),
    Column("grant_id", String(40), nullable=True, unique=True),
    Column("balance", BigInteger, nullable=False, default=0),
    # The lowest balance allowed: 0 for most accounts, minus the co-payment limit for ``copay``,
    # NULL (no floor) for an issuer's ``programme`` source account.
    Column("floor", BigInteger, nullable=True),
    CheckConstraint("floor IS NULL OR balance >= floor", name="above_floor"),
    UniqueConstraint("kind", "org_id", "grant_id", name="uq_accounts_kind_org_grant"),
)
Index("ix_accounts_org_kind", accounts.c.org_id, accounts.c.kind)

grants = Table(
    "grants",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("issuer_org", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("voucher_jti", String(64), ForeignKey("vouchers.jti"), nullable=False, unique=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("coverage_bps", Integer, nullable=False),
    Column("resources", String(64), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),
    CheckConstraint("status IN ('active','expired')", name="status"),
)
Index("ix_grants_status_expires", grants.c.status, grants.c.expires_ms)

holds = Table(
    "holds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("job_id", String(40), nullable=True, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("settled", BigInteger, nullable=False, default=0),
    Column("released", BigInteger, nullable=False, default=0),
    Column("state", String(10), nullable=False),
    Column("lines", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("closed_ms", BigInteger, nullable=True),
    CheckConstraint("state IN ('HELD','SETTLED','RELEASED','EXPIRED')", name="state"),
    CheckConstraint("amount > 0 AND settled >= 0 AND released >= 0", name="amounts"),
    CheckConstraint("settled <= amount", name="settle_le_hold"),
    CheckConstraint("state = 'HELD' OR settled + released = amount", name="closed_balanced"),
)
Index("ix_holds_state_expires", holds.c.state, holds.c.expires_ms)
Index("ix_holds_org_state", holds.c.org_id, holds.c.state)

entries = Table(
    "entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("txn_id", String(40), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("org_id", String(40), nullable=True, index=True),
    Column("issuer_org", String(40), nullable=True),
    Column("hold_id", String(40), nullable=True),
    Column("created_ms", BigInteger, nullable=False, index=True),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("org_id", String(40), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("response", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False, index=True),  # retention cleanup (0009)
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("entry_hash", String(64), nullable=False),
)

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("actor_org", String(40), nullable=True),
    Column("action", String(40), nullable=False),
    Column("object_type", String(20), nullable=False),
    Column("object_id", String(64), nullable=False),
    Column("org_id", String(40), nullable=True, index=True),
    Column("dataset_id", String(40), nullable=True, index=True),
    Column("body", LargeBinary, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
)

# -- the audit log as a transparency log (migration 0007) ------------------------------------------------
# Every complete subtree of the RFC 9162 Merkle tree over the entries: (level, idx) covers leaves
# [idx * 2**level, (idx + 1) * 2**level). Written by the background loop as it extends the tree; a proof
# reads O(log n) of these rows.
audit_tree = Table(
    "audit_tree",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
)

# One row (id = 1): how far the tree reaches, and the latest signed checkpoint (size, root, time).
audit_tree_head = Table(
    "audit_tree_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("last_entry_hash", String(64), nullable=False),
    Column("checkpoint_seq", BigInteger, nullable=False),
    Column("checkpoint_size", BigInteger, nullable=False),
    Column("checkpoint_root", LargeBinary, nullable=True),
    Column("checkpoint_ms", BigInteger, nullable=False),
)

# The one checkpoint sequence of all replicas (signed by the holder of the advisory lock): C2SP notes.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False, index=True),
    Column("root", LargeBinary, nullable=False),
    Column("time_ms", BigInteger, nullable=False),
    Column("note", Text, nullable=False),
)

# Witness cosignatures (C2SP tlog-cosignature lines) on a checkpoint, one per witness.
audit_cosignatures = Table(
    "audit_cosignatures",
    metadata,
    Column("checkpoint_seq", BigInteger, ForeignKey("audit_checkpoints.seq"), primary_key=True),
    Column("witness", String(200), primary_key=True),
    Column("timestamp_s", BigInteger, nullable=False),
    Column("line", Text, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
)

# Each ledger transfer's canonical body (legs, amounts, idempotency key) and hash, written inside the
# transfer's transaction; the background loop folds unfolded ones into one audit entry (``audit_seq``).
ledger_transfers = Table(
    "ledger_transfers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("txn_id", String(40), nullable=False, unique=True),
    Column("body", LargeBinary, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("audit_seq", BigInteger, nullable=True, index=True),
)

# -- compute (migration 0002) ---------------------------------------------------------------------

rate_cards = Table(
    "rate_cards",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("card", Text, nullable=False),  # quotas.pricing.RateCard JSON (exact fractions as strings)
    Column("created_ms", BigInteger, nullable=False),
    Column("created_by", String(40), nullable=True),
)

sme_quotas = Table(
    "sme_quotas",
    metadata,
    Column("org_id", String(40), ForeignKey("organisations.id"), primary_key=True),
    Column("max_milli_cpu", BigInteger, nullable=False),
    Column("max_gpus", Integer, nullable=False),
    Column("max_memory_mib", BigInteger, nullable=False),
    Column("max_running_jobs", Integer, nullable=False),
    Column("max_queued_jobs", Integer, nullable=False),
    Column("changed_ms", BigInteger, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("kind", String(12), nullable=False),  # job | training | query
    Column("name", String(63), nullable=False, unique=True),  # deterministic backend name
    Column("state", String(10), nullable=False),
    Column("entrypoint", Text, nullable=False),
    Column("working_dir", Text, nullable=True),
    Column("requirements", Text, nullable=False),  # JSON list
    Column("milli_cpu", BigInteger, nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("memory_mib", BigInteger, nullable=False),
    Column("max_runtime_s", Integer, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("rate_card_version", Integer, nullable=False),
    Column("max_cost", BigInteger, nullable=False),
    Column("hold_id", String(40), nullable=True),
    Column("cost", BigInteger, nullable=True),
    Column("voucher_paid", BigInteger, nullable=True),
    Column("copaid", BigInteger, nullable=True),
    Column("message", Text, nullable=False, default=""),
    Column("spec", Text, nullable=True),  # JSON for training/query jobs
    Column("submitted_ms", BigInteger, nullable=False),
    Column("admitted_ms", BigInteger, nullable=True),
    Column("started_ms", BigInteger, nullable=True),  # the backend's start time
    Column("ended_ms", BigInteger, nullable=True),  # the backend's end time
    Column("settled_ms", BigInteger, nullable=True),
    Column("stop_requested", Boolean, nullable=False, default=False),
    Column("reason", String(32), nullable=True),  # why the sandbox ended it (out_of_memory, disk_quota, ...)
    Column("code_bytes", BigInteger, nullable=False, default=0),  # its unpacked code: the SME's disk quota
    Column("files_expired_ms", BigInteger, nullable=True),  # when its code dir was removed (retention)
    Column("last_seen_ms", BigInteger, nullable=True),  # last seen running by a reconcile: LOST bills to it
    Column("wait_reason", String(16), nullable=True),  # queued: the limit that stops it; rejected: why
    Column("wait_detail", Text, nullable=True),  # that reason with its amounts (written only when it changes)
    CheckConstraint(
        "state IN ('queued','admitted','running','succeeded','failed','stopped','timed_out','lost','rejected')",
        name="state",
    ),
)
Index("ix_jobs_state_submitted", jobs.c.state, jobs.c.submitted_ms)

usage_records = Table(
    "usage_records",
    metadata,
    Column("job_id", String(40), ForeignKey("jobs.id"), primary_key=True),
    Column("resource", String(8), primary_key=True),
    Column("org_id", String(40), nullable=False, index=True),
    Column("quantity", BigInteger, nullable=False),  # milli-CPU·ms, GPU·ms or MiB·ms
    Column("start_ms", BigInteger, nullable=False),
    Column("end_ms", BigInteger, nullable=False, index=True),
    CheckConstraint("end_ms >= start_ms AND quantity >= 0", name="sane"),
)

# What the subsidy report sums, kept per programme, SME and UTC day by the settlement that causes it (same
# transaction, see broker.db.subsidy): a report reads one row per SME and day instead of every entry and
# usage record of the period.
subsidy_daily = Table(
    "subsidy_daily",
    metadata,
    Column("issuer_org", String(40), ForeignKey("organisations.id"), primary_key=True),
    Column("org_id", String(40), ForeignKey("organisations.id"), primary_key=True),
    # The start of the settlement's UTC quarter-hour (0010; was its UTC day): every time zone's midnight falls on
    # one, so a report in any programme zone sums whole buckets.
    Column("day_ms", BigInteger, primary_key=True),
    Column("jobs", BigInteger, nullable=False),  # settled holds this programme paid a part of
    Column("voucher", BigInteger, nullable=False),  # this programme's share of their cost
    Column("copay", BigInteger, nullable=False),  # the SME's co-payment of those holds
    Column("cpu", BigInteger, nullable=False),  # usage of their jobs: milli-CPU·ms
    Column("gpu", BigInteger, nullable=False),  # GPU·ms
    Column("memory", BigInteger, nullable=False),  # MiB·ms
)

# Settled holds no programme paid any part of (0009): the SME's co-payment alone, per SME and UTC quarter-hour
# (like subsidy_daily), so a subsidy report counts every settled cost of its grantees (broker/db/subsidy.py).
subsidy_copay = Table(
    "subsidy_copay",
    metadata,
    Column("org_id", String(40), ForeignKey("organisations.id"), primary_key=True),
    Column("day_ms", BigInteger, primary_key=True),  # start of the settlement's quarter-hour (UTC ms)
    Column("jobs", BigInteger, nullable=False),
    Column("copay", BigInteger, nullable=False),
    Column("cpu", BigInteger, nullable=False),
    Column("gpu", BigInteger, nullable=False),
    Column("memory", BigInteger, nullable=False),
)

# KubeRay code archives (0006): a job's working dir served at a capability URL. Only the token's SHA-256 is
# stored; a fetch counts with one conditional UPDATE (broker/db/archives.py), so no race passes max_fetches.
job_archives = Table(
    "job_archives",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("job_id", String(40), ForeignKey("jobs.id"), nullable=False, index=True),
    Column("expires_ms", BigInteger, nullable=False),
    Column("max_fetches", Integer, nullable=False),
    Column("fetches", Integer, nullable=False, default=0),
    Column("revoked", Boolean, nullable=False, default=False),
    CheckConstraint("fetches >= 0 AND fetches <= max_fetches", name="fetches"),
)
