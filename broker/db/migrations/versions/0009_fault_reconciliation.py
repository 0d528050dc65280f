"""interrupted privacy charges, idempotency retention, co-payments without a voucher in the roll-up

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 20:00:00

* ``privacy_charges.status`` may be ``interrupted`` (a reservation whose run was cut off by a crash; its
  privacy cost stays spent) and is widened to hold it;
* ``idempotency.created_ms`` is indexed for the retention cleanup;
* ``subsidy_copay`` rolls up settled holds no programme paid any part of (the SME's co-payment alone),
  filled here from the ledger in UTC quarter-hours (the roll-up's grain from 0010 on; a frozen copy of
  ``broker.db.subsidy.REBUILD_COPAY``), so a subsidy report reconciles with the ledger's ``copaid``.
"""

from alembic import op
import sqlalchemy as sa



revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_OLD_STATUS = "status IN ('reserved','answered','failed')"
_NEW_STATUS = "status IN ('reserved','answered','failed','interrupted')"


def upgrade() -> None:
    with op.batch_alter_table('privacy_charges', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_privacy_charges_status'), type_='check')
        batch_op.alter_column('status', existing_type=sa.String(length=10), type_=sa.String(length=16))
        batch_op.create_check_constraint(batch_op.f('ck_privacy_charges_status'), _NEW_STATUS)
    op.create_index(op.f('ix_idempotency_created_ms'), 'idempotency', ['created_ms'], unique=False)
    op.create_table('subsidy_copay',
    sa.Column('org_id', sa.String(length=40), nullable=False),
    sa.Column('day_ms', sa.BigInteger(), nullable=False),
    sa.Column('jobs', sa.BigInteger(), nullable=False),
    sa.Column('copay', sa.BigInteger(), nullable=False),
    sa.Column('cpu', sa.BigInteger(), nullable=False),
    sa.Column('gpu', sa.BigInteger(), nullable=False),
    sa.Column('memory', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisations.id'], name=op.f('fk_subsidy_copay_org_id_organisations')),
    sa.PrimaryKeyConstraint('org_id', 'day_ms', name=op.f('pk_subsidy_copay'))
    )
    op.execute(sa.text(BACKFILL))


def downgrade() -> None:
    op.drop_table('subsidy_copay')
    op.drop_index(op.f('ix_idempotency_created_ms'), table_name='idempotency')
    op.execute("UPDATE privacy_charges SET status = 'failed' WHERE status = 'interrupted'")
    with op.batch_alter_table('privacy_charges', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_privacy_charges_status'), type_='check')
        batch_op.alter_column('status', existing_type=sa.String(length=16), type_=sa.String(length=10))
        batch_op.create_check_constraint(batch_op.f('ck_privacy_charges_status'), _OLD_STATUS)


BACKFILL = """
    INSERT INTO subsidy_copay (org_id, day_ms, jobs, copay, cpu, gpu, memory)
    WITH paid AS (
        SELECT DISTINCT e.hold_id AS hold_id
        FROM entries e JOIN accounts a ON a.id = e.account_id
        WHERE a.kind = 'spent' AND a.grant_id IS NULL AND e.kind = 'settle' AND e.amount > 0
    ),
    settled_at AS (
        SELECT hold_id, MIN(created_ms) AS ts FROM entries WHERE kind = 'settle' GROUP BY hold_id
    ),
    job_usage AS (
        SELECT job_id,
               SUM(CASE WHEN resource = 'cpu' THEN quantity ELSE 0 END) AS cpu,
               SUM(CASE WHEN resource = 'gpu' THEN quantity ELSE 0 END) AS gpu,
               SUM(CASE WHEN resource = 'memory' THEN quantity ELSE 0 END) AS memory
        FROM usage_records GROUP BY job_id
    )
    SELECT h.org_id, s.ts - s.ts % 900000, COUNT(*), SUM(h.settled),
           COALESCE(SUM(u.cpu), 0), COALESCE(SUM(u.gpu), 0), COALESCE(SUM(u.memory), 0)
    FROM holds h
    JOIN settled_at s ON s.hold_id = h.id
    LEFT JOIN paid p ON p.hold_id = h.id
    LEFT JOIN job_usage u ON u.job_id = h.job_id
    WHERE h.state = 'SETTLED' AND h.settled > 0 AND p.hold_id IS NULL
    GROUP BY h.org_id, s.ts - s.ts % 900000
"""
