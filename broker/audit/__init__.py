"""The audit log core: a SHA-256 hash chain of entries and Ed25519-signed checkpoints kept outside the DB.

Pure: no database here (the table and repository live in ``broker/db``). Public surface:

- chain: :data:`GENESIS_HASH`, :class:`AuditRecord`, :func:`body_bytes`, :func:`compute_hash`,
  :func:`next_record`, :func:`verify_chain` (deep), :func:`verify_chain_bodies` (fast),
  :func:`record_from_body`, :func:`record_matches_body`, :func:`columns_match`, :class:`VerifyResult`
- checkpoints: :class:`Checkpoint`, :func:`sign_checkpoint`, :func:`verify_checkpoint`,
  :class:`CheckpointFile` (``append``, ``read_all``, ``last``), :class:`CheckpointFileError`
"""

from broker.audit.chain import (
    GENESIS_HASH,
    AuditRecord,
    VerifyResult,
    body_bytes,
    columns_match,
    compute_hash,
    next_record,
    record_from_body,
    record_matches_body,
    verify_chain,
    verify_chain_bodies,
)
from broker.audit.checkpoints import (
    Checkpoint,
    CheckpointFile,
    CheckpointFileError,
    checkpoint_message,
    sign_checkpoint,
    verify_checkpoint,
)

__all__ = [
    "GENESIS_HASH",
    "AuditRecord",
    "Checkpoint",
    "CheckpointFile",
    "CheckpointFileError",
    "VerifyResult",
    "body_bytes",
    "checkpoint_message",
    "columns_match",
    "compute_hash",
    "next_record",
    "record_from_body",
    "record_matches_body",
    "sign_checkpoint",
    "verify_chain",
    "verify_chain_bodies",
    "verify_checkpoint",
]
