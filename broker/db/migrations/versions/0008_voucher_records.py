"""vouchers bound to their issued record; keys wrapped at rest

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 19:00:00

Existing vouchers get their claims rebuilt from the record's columns (``iat`` was the issue time in
seconds, as the service set it), and no token hash: they are then matched on claims alone, which is what
binds the grant to the record. New vouchers always carry both.

Issuer private keys stored in clear (``issuer_keys.private_pem``) are wrapped under the key-encryption key
(``broker/keys.py``) into ``private_wrapped`` and the clear column is dropped. That needs the KEK: the one
``SBX_KEK_FILE`` names (embedded: the default path, created here like ``sbx init`` would when missing;
production: the mounted Secret, or the migration stops). A database with no such keys needs no KEK. The
clear keys may survive in old backups and free database pages: rotate them (``sbx issuer key create``).
"""

from alembic import op
import sqlalchemy as sa

from common.canonical import canonical_json


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_vouchers = sa.table(
    'vouchers',
    sa.column('jti', sa.String), sa.column('issuer_org', sa.String), sa.column('sme_org', sa.String),
    sa.column('credits', sa.BigInteger), sa.column('coverage_bps', sa.Integer),
    sa.column('resources', sa.String), sa.column('nbf', sa.BigInteger), sa.column('exp', sa.BigInteger),
    sa.column('credit_exp', sa.BigInteger), sa.column('issued_ms', sa.BigInteger), sa.column('claims', sa.Text),
)


def _claims_of(row: sa.Row) -> str:
    """The claim set the service signed for this row (same member names and order rules as the token)."""
    return canonical_json({
        'jti': row.jti, 'iss': row.issuer_org, 'sub': row.sme_org, 'nbf': int(row.nbf), 'exp': int(row.exp),
        'iat': int(row.issued_ms) // 1000, 'credits': int(row.credits), 'coverage': int(row.coverage_bps),
        'resources': sorted(row.resources.split(',')), 'credit_exp': int(row.credit_exp),
    }).decode('utf-8')


def _upgrade_vouchers() -> None:
    with op.batch_alter_table('vouchers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('claims', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('origin', sa.String(length=10), server_default='broker', nullable=False))
    conn = op.get_bind()
    for row in conn.execute(sa.select(_vouchers)).fetchall():
        conn.execute(_vouchers.update().where(_vouchers.c.jti == row.jti).values(claims=_claims_of(row)))
    with op.batch_alter_table('vouchers', schema=None) as batch_op:
        batch_op.alter_column('claims', existing_type=sa.Text(), nullable=False)
        batch_op.create_check_constraint(op.f('ck_vouchers_origin'), "origin IN ('broker','issuer')")


_keys = sa.table(
    'issuer_keys', sa.column('kid', sa.String), sa.column('private_pem', sa.LargeBinary),
    sa.column('private_wrapped', sa.LargeBinary),
)


def _migration_kek():  # type: ignore[no-untyped-def]
    """The KEK of the environment's settings (created in embedded mode when there is none yet)."""
    from broker.keys import create_kek, default_kek_path, load_kek
    from broker.settings import Settings

    settings = Settings()
    production = settings.environment == 'production'
    if not production:
        create_kek(settings.kek_file or default_kek_path(), state_dir=settings.state_dir)
    return load_kek(settings.kek_file, production=production, state_dir=settings.state_dir)


def _upgrade_issuer_keys() -> None:
    from broker.keys import issuer_key_label

    with op.batch_alter_table('issuer_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('private_wrapped', sa.LargeBinary(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.select(_keys.c.kid, _keys.c.private_pem).where(_keys.c.private_pem.is_not(None)))
    rows = rows.fetchall()
    if rows:
        kek = _migration_kek()
        for row in rows:
            wrapped = kek.wrap(bytes(row.private_pem), label=issuer_key_label(row.kid))
            conn.execute(_keys.update().where(_keys.c.kid == row.kid).values(private_wrapped=wrapped))
    with op.batch_alter_table('issuer_keys', schema=None) as batch_op:
        batch_op.drop_column('private_pem')


def upgrade() -> None:
    _upgrade_vouchers()
    _upgrade_issuer_keys()


def downgrade() -> None:
    # Downgrading keeps the keys wrapped: the clear column comes back empty (the broker below 0008 then
    # signs nothing for those issuers until a new key is created).
    with op.batch_alter_table('issuer_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('private_pem', sa.LargeBinary(), nullable=True))
        batch_op.drop_column('private_wrapped')
    with op.batch_alter_table('vouchers', schema=None) as batch_op:
        batch_op.drop_constraint('ck_vouchers_origin', type_='check')
        batch_op.drop_column('origin')
        batch_op.drop_column('claims')
        batch_op.drop_column('token_sha256')
