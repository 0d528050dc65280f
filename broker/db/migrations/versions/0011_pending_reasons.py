"""pending reasons: why each queued job waits, and why a refused submission was refused

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 19:40:00

* ``jobs.wait_reason`` (``running_jobs``, ``quota``, ``credit``, ``capacity``, ``fair_share``; for a
  ``rejected`` job the refusal's code) and ``jobs.wait_detail`` (that reason with its amounts), written by
  the admission pass only when they change; both NULL for existing rows (the next pass fills queued ones).
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('wait_reason', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('wait_detail', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('wait_detail')
        batch_op.drop_column('wait_reason')
