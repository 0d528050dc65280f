"""Datasets: policies, access approvals, bounding (``prepare``) and object stores (``storage``).

The pure cores are re-exported here; ``datasets.prepare`` (Polars) and ``datasets.storage`` (I/O) are imported
by module path.
"""

from datasets.approval import (
    AccessDenied,
    AccessRequest,
    AccessStatus,
    Grant,
    ReleaseKind,
    approve,
    check_use,
    expire_if_due,
    new_request,
    refuse,
    revoke,
)
from datasets.policy import (
    OTHER_CATEGORY,
    ColumnKind,
    ColumnSpec,
    DatasetPolicy,
    PolicyError,
    validate_against_schema,
)

__all__ = [
    "OTHER_CATEGORY",
    "AccessDenied",
    "AccessRequest",
    "AccessStatus",
    "ColumnKind",
    "ColumnSpec",
    "DatasetPolicy",
    "Grant",
    "PolicyError",
    "ReleaseKind",
    "approve",
    "check_use",
    "expire_if_due",
    "new_request",
    "refuse",
    "revoke",
    "validate_against_schema",
]
