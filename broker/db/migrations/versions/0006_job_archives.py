"""KubeRay code archives served at capability URLs

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 19:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('job_archives',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('expires_ms', sa.BigInteger(), nullable=False),
    sa.Column('max_fetches', sa.Integer(), nullable=False),
    sa.Column('fetches', sa.Integer(), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.CheckConstraint('fetches >= 0 AND fetches <= max_fetches', name=op.f('ck_job_archives_fetches')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_archives_job_id_jobs')),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_job_archives'))
    )
    op.create_index(op.f('ix_job_archives_job_id'), 'job_archives', ['job_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_job_archives_job_id'), table_name='job_archives')
    op.drop_table('job_archives')
