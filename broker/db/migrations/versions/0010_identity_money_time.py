"""organisations' legal identity, programme currency and time zone, the roll-up in quarter-hours

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 19:40:00

Organisations get ``uscc`` (GB 32100-2015, unique), ``name_zh``, ``name_en`` and ``locale`` (all NULL for the
existing rows). Programmes get ``currency`` (NULL for the existing ones: they keep counting "credits"),
``time_zone`` (``UTC`` for the existing ones, so their reports keep their periods) and ``default_locale``.
The subsidy roll-up is rebuilt from the ledger in UTC quarter-hours (a frozen copy of
``broker.db.subsidy.REBUILD``), so reports in any time zone sum whole buckets.
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('organisations') as batch:
        batch.add_column(sa.Column('uscc', sa.String(length=18), nullable=True))
        batch.add_column(sa.Column('name_zh', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('name_en', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('locale', sa.String(length=10), nullable=True))
        batch.create_unique_constraint(op.f('uq_organisations_uscc'), ['uscc'])
    with op.batch_alter_table('programmes') as batch:
        batch.add_column(sa.Column('currency', sa.String(length=3), nullable=True))
        batch.add_column(sa.Column('time_zone', sa.String(length=64), nullable=False, server_default='UTC'))
        batch.add_column(sa.Column('default_locale', sa.String(length=10), nullable=True))
    op.execute(sa.text('DELETE FROM subsidy_daily'))
    op.execute(sa.text(BACKFILL))


def downgrade() -> None:
    op.execute(sa.text('DELETE FROM subsidy_daily'))
    op.execute(sa.text(BACKFILL.replace('% 900000', '% 86400000')))
    with op.batch_alter_table('programmes') as batch:
        batch.drop_column('default_locale')
        batch.drop_column('time_zone')
        batch.drop_column('currency')
    with op.batch_alter_table('organisations') as batch:
        batch.drop_constraint(op.f('uq_organisations_uscc'), type_='unique')
        batch.drop_column('locale')
        batch.drop_column('name_en')
        batch.drop_column('name_zh')
        batch.drop_column('uscc')


BACKFILL = """
    INSERT INTO subsidy_daily (issuer_org, org_id, day_ms, jobs, voucher, copay, cpu, gpu, memory)
    WITH legs AS (
        SELECT e.hold_id AS hold_id, e.org_id AS org_id, a.org_id AS issuer_org, e.amount AS amount,
               e.created_ms AS created_ms
        FROM entries e JOIN accounts a ON a.id = e.account_id
        WHERE a.kind = 'spent' AND a.grant_id IS NULL AND e.kind = 'settle'
    ),
    per_hold AS (SELECT hold_id, SUM(amount) AS paid FROM legs GROUP BY hold_id),
    mine AS (
        SELECT hold_id, org_id, issuer_org, SUM(amount) AS amount, MIN(created_ms) AS ts
        FROM legs GROUP BY hold_id, org_id, issuer_org
    ),
    job_usage AS (
        SELECT job_id,
               SUM(CASE WHEN resource = 'cpu' THEN quantity ELSE 0 END) AS cpu,
               SUM(CASE WHEN resource = 'gpu' THEN quantity ELSE 0 END) AS gpu,
               SUM(CASE WHEN resource = 'memory' THEN quantity ELSE 0 END) AS memory
        FROM usage_records GROUP BY job_id
    )
    SELECT m.issuer_org, m.org_id, m.ts - m.ts % 900000, COUNT(*), SUM(m.amount), SUM(h.settled - p.paid),
           COALESCE(SUM(u.cpu), 0), COALESCE(SUM(u.gpu), 0), COALESCE(SUM(u.memory), 0)
    FROM mine m
    JOIN per_hold p ON p.hold_id = m.hold_id
    JOIN holds h ON h.id = m.hold_id
    LEFT JOIN job_usage u ON u.job_id = h.job_id
    WHERE m.amount > 0
    GROUP BY m.issuer_org, m.org_id, m.ts - m.ts % 900000
    """
