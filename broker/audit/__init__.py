"""The audit log core: a SHA-256 hash chain of entries, an RFC 9162 Merkle tree over them, and C2SP signed
checkpoints (tree heads) with witness cosignatures. Pure: no database here (tables and repositories live in
``broker/db``). Public surface:

- chain: :data:`GENESIS_HASH`, :class:`AuditRecord`, :func:`body_bytes`, :func:`compute_hash`,
  :func:`next_record`, :func:`leaf_of`, :func:`verify_chain` (deep), :func:`verify_chain_bodies` (fast),
  :func:`record_from_body`, :func:`record_matches_body`, :func:`columns_match`, :class:`VerifyResult`
- merkle (``broker.audit.merkle``): leaf/node hashing, tree heads, inclusion and consistency proofs
- note (``broker.audit.note``): C2SP signed notes, checkpoint text, cosignatures
- checkpoints: :class:`Checkpoint`, :func:`sign_checkpoint`, :func:`verify_checkpoint`, :func:`cosigners`,
  :class:`CheckpointFile` (``append``, ``read_all``, ``last``), :class:`CheckpointFileError`
- transparency (``broker.audit.transparency``): anchoring checkpoints to the stored tree; record rules
"""

from broker.audit.chain import (
    GENESIS_HASH,
    AuditRecord,
    VerifyResult,
    body_bytes,
    columns_match,
    compute_hash,
    leaf_of,
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
    cosigners,
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
    "columns_match",
    "compute_hash",
    "cosigners",
    "leaf_of",
    "next_record",
    "record_from_body",
    "record_matches_body",
    "sign_checkpoint",
    "verify_chain",
    "verify_chain_bodies",
    "verify_checkpoint",
]
