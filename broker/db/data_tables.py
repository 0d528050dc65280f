"""Tables of the data foundation (datasets, access grants, privacy-budget ledger), on the shared metadata.

Privacy budgets are integers: ε in micro-ε (``*_epsilon_micro``) and δ in 10⁻¹² (``*_delta_e12``), as in
:mod:`privacy.budget`. Every cap that a query is charged against lives in one row with its own ``spent``
counters and a CHECK that ``spent <= cap``; the repository moves them with one conditional ``UPDATE``:

* ``datasets``: the dataset's global budget (all SMEs together; a new version keeps what was spent);
* ``dataset_sme_budgets``: the per-SME cap of one dataset, across all of that SME's grants;
* ``access_requests``: the grant of one approval (bound to one version's content hash).

``privacy_charges`` is the budget ledger: one immutable row per reservation (never refunded once the data
was read); its ``status`` only records how the run ended.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from broker.db.tables import metadata

datasets = Table(
    "datasets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("custodian_org", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("latest_version", Integer, nullable=False),
    Column("total_epsilon_micro", BigInteger, nullable=False),
    Column("total_delta_e12", BigInteger, nullable=False),
    Column("spent_epsilon_micro", BigInteger, nullable=False, default=0),
    Column("spent_delta_e12", BigInteger, nullable=False, default=0),
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("custodian_org", "name", name="uq_datasets_custodian_name"),
    CheckConstraint(
        "spent_epsilon_micro >= 0 AND spent_delta_e12 >= 0 AND spent_epsilon_micro <= total_epsilon_micro "
        "AND spent_delta_e12 <= total_delta_e12",
        name="within_budget",
    ),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column("dataset_id", String(40), ForeignKey("datasets.id"), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("content_hash", String(64), nullable=False, index=True),
    Column("object_key", String(1024), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("source_format", String(8), nullable=False),
    Column("schema_json", Text, nullable=False),
    Column("policy_json", Text, nullable=False),
    Column("rows_in", BigInteger, nullable=False),
    Column("rows_kept", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("created_by", String(40), nullable=False),
    UniqueConstraint("dataset_id", "content_hash", name="uq_dataset_versions_dataset_hash"),
)

access_requests = Table(
    "access_requests",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("dataset_id", String(40), ForeignKey("datasets.id"), nullable=False, index=True),
    Column("dataset_version", Integer, nullable=False),
    Column("dataset_hash", String(64), nullable=False),
    Column("sme_org", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("custodian_org", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("purpose", Text, nullable=False),
    Column("asked_epsilon_micro", BigInteger, nullable=False),
    Column("asked_delta_e12", BigInteger, nullable=False),
    Column("asked_kinds", String(40), nullable=False),
    Column("status", String(10), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("decided_ms", BigInteger, nullable=True),
    Column("reason", Text, nullable=False, default=""),
    Column("grant_epsilon_micro", BigInteger, nullable=True),
    Column("grant_delta_e12", BigInteger, nullable=True),
    Column("grant_kinds", String(40), nullable=True),
    Column("expires_ms", BigInteger, nullable=True),
    Column("spent_epsilon_micro", BigInteger, nullable=False, default=0),
    Column("spent_delta_e12", BigInteger, nullable=False, default=0),
    ForeignKeyConstraint(
        ["dataset_id", "dataset_version"],
        ["dataset_versions.dataset_id", "dataset_versions.version"],
        name="fk_access_requests_version",
    ),
    CheckConstraint("status IN ('pending','approved','refused','revoked','expired')", name="status"),
    CheckConstraint(
        "spent_epsilon_micro >= 0 AND spent_delta_e12 >= 0 AND "
        "spent_epsilon_micro <= COALESCE(grant_epsilon_micro, 0) AND "
        "spent_delta_e12 <= COALESCE(grant_delta_e12, 0)",
        name="within_grant",
    ),
)
Index("ix_access_requests_dataset_sme", access_requests.c.dataset_id, access_requests.c.sme_org)

dataset_sme_budgets = Table(
    "dataset_sme_budgets",
    metadata,
    Column("dataset_id", String(40), ForeignKey("datasets.id"), primary_key=True),
    Column("sme_org", String(40), ForeignKey("organisations.id"), primary_key=True),
    Column("cap_epsilon_micro", BigInteger, nullable=False),
    Column("cap_delta_e12", BigInteger, nullable=False),
    Column("spent_epsilon_micro", BigInteger, nullable=False, default=0),
    Column("spent_delta_e12", BigInteger, nullable=False, default=0),
    CheckConstraint(
        "spent_epsilon_micro >= 0 AND spent_delta_e12 >= 0 AND spent_epsilon_micro <= cap_epsilon_micro "
        "AND spent_delta_e12 <= cap_delta_e12",
        name="within_cap",
    ),
)

privacy_charges = Table(
    "privacy_charges",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("dataset_id", String(40), ForeignKey("datasets.id"), nullable=False, index=True),
    Column("dataset_version", Integer, nullable=False),
    Column("request_id", String(40), ForeignKey("access_requests.id"), nullable=False, index=True),
    Column("sme_org", String(40), ForeignKey("organisations.id"), nullable=False, index=True),
    Column("kind", String(10), nullable=False),
    Column("epsilon_micro", BigInteger, nullable=False),
    Column("delta_e12", BigInteger, nullable=False),
    Column("spec", Text, nullable=False),
    Column("hold_id", String(40), nullable=True),
    Column("rate_card_version", Integer, nullable=False),
    Column("credits", BigInteger, nullable=True),
    Column("elapsed_ms", BigInteger, nullable=True),
    Column("status", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("finished_ms", BigInteger, nullable=True),
    CheckConstraint("kind IN ('query','training')", name="kind"),
    # interrupted (0009): a run cut off by a crash, closed by reconciliation; its cost stays spent
    CheckConstraint("status IN ('reserved','answered','failed','interrupted')", name="status"),
    CheckConstraint("epsilon_micro >= 0 AND delta_e12 >= 0", name="non_negative"),
)

__all__ = [
    "access_requests",
    "dataset_sme_budgets",
    "dataset_versions",
    "datasets",
    "metadata",
    "privacy_charges",
]
