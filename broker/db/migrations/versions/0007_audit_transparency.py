"""audit log as a Merkle tree with signed, witnessed checkpoints

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 19:00:00
"""

import hashlib
import json

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_tree',
    sa.Column('level', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('idx', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('hash', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('level', 'idx', name=op.f('pk_audit_tree'))
    )
    op.create_table('audit_tree_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('last_entry_hash', sa.String(length=64), nullable=False),
    sa.Column('checkpoint_seq', sa.BigInteger(), nullable=False),
    sa.Column('checkpoint_size', sa.BigInteger(), nullable=False),
    sa.Column('checkpoint_root', sa.LargeBinary(), nullable=True),
    sa.Column('checkpoint_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_tree_head'))
    )
    op.create_table('audit_checkpoints',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('root', sa.LargeBinary(), nullable=False),
    sa.Column('time_ms', sa.BigInteger(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_checkpoints'))
    )
    op.create_index(op.f('ix_audit_checkpoints_size'), 'audit_checkpoints', ['size'], unique=False)
    op.create_table('audit_cosignatures',
    sa.Column('checkpoint_seq', sa.BigInteger(), nullable=False),
    sa.Column('witness', sa.String(length=200), nullable=False),
    sa.Column('timestamp_s', sa.BigInteger(), nullable=False),
    sa.Column('line', sa.Text(), nullable=False),
    sa.Column('received_ms', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['checkpoint_seq'], ['audit_checkpoints.seq'], name=op.f('fk_audit_cosignatures_checkpoint_seq_audit_checkpoints')),
    sa.PrimaryKeyConstraint('checkpoint_seq', 'witness', name=op.f('pk_audit_cosignatures'))
    )
    op.create_table('ledger_transfers',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('txn_id', sa.String(length=40), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('audit_seq', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_transfers')),
    sa.UniqueConstraint('txn_id', name=op.f('uq_ledger_transfers_txn_id'))
    )
    op.create_index(op.f('ix_ledger_transfers_audit_seq'), 'ledger_transfers', ['audit_seq'], unique=False)
    op.execute(
        "INSERT INTO audit_tree_head (id, size, last_entry_hash, checkpoint_seq, checkpoint_size, checkpoint_ms) "
        "VALUES (1, 0, '" + '0' * 64 + "', 0, 0, 0)"
    )
    _backfill_transfers()


def _body(txn: dict, legs: list) -> bytes:
    """A frozen copy of broker.db.ledger_chain.transfer_body (canonical JSON: sorted keys, no spaces)."""
    data = {
        "v": 1, "txn": txn["txn_id"], "kind": txn["kind"], "org": txn["org_id"], "hold": txn["hold_id"],
        "ms": txn["created_ms"], "idem": None, "legs": legs,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _backfill_transfers() -> None:
    """Every transfer made before 0007 gets its body, so `sbx ledger verify` covers the whole ledger."""
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT txn_id, kind, org_id, hold_id, created_ms, account_id, amount, issuer_org FROM entries ORDER BY id"
    )).mappings().all()
    txns: dict[str, tuple[dict, list]] = {}
    for r in rows:
        txn, legs = txns.setdefault(r["txn_id"], (dict(r), []))
        legs.append([int(r["account_id"]), int(r["amount"]), r["issuer_org"]])
    for txn_id, (txn, legs) in txns.items():
        body = _body({**txn, "created_ms": int(txn["created_ms"])}, legs)
        conn.execute(
            sa.text("INSERT INTO ledger_transfers (txn_id, body, digest) VALUES (:t, :b, :d)"),
            {"t": txn_id, "b": body, "d": hashlib.sha256(body).hexdigest()},
        )


def downgrade() -> None:
    op.drop_index(op.f('ix_ledger_transfers_audit_seq'), table_name='ledger_transfers')
    op.drop_table('ledger_transfers')
    op.drop_table('audit_cosignatures')
    op.drop_index(op.f('ix_audit_checkpoints_size'), table_name='audit_checkpoints')
    op.drop_table('audit_checkpoints')
    op.drop_table('audit_tree_head')
    op.drop_table('audit_tree')
