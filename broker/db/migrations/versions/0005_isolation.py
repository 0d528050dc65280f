"""isolation and lost jobs: why a sandbox ended a job, the disk its files take (per-SME disk quota,
retention), when it was last seen running, and the terminal state ``lost``

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 19:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


OLD_STATES = "state IN ('queued','admitted','running','succeeded','failed','stopped','timed_out','rejected')"
NEW_STATES = (
    "state IN ('queued','admitted','running','succeeded','failed','stopped','timed_out','lost','rejected')"
)


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reason', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('code_bytes', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('files_expired_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('last_seen_ms', sa.BigInteger(), nullable=True))
        batch_op.drop_constraint(op.f('ck_jobs_state'), type_='check')
        batch_op.create_check_constraint(op.f('ck_jobs_state'), NEW_STATES)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_jobs_state'), type_='check')
        batch_op.create_check_constraint(op.f('ck_jobs_state'), OLD_STATES)
        batch_op.drop_column('last_seen_ms')
        batch_op.drop_column('files_expired_ms')
        batch_op.drop_column('code_bytes')
        batch_op.drop_column('reason')
