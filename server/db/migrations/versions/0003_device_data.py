"""device data: telemetry/event epochs, status epochs, ingest rejections, enrollment approval and tokens

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, old, new in (("telemetry", "uq_telemetry_seq", "uq_telemetry_epoch_seq"),
                            ("events", "uq_event_seq", "uq_event_epoch_seq")):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('epoch', sa.BigInteger(), nullable=False, server_default='0'))
            batch_op.add_column(sa.Column('ts_replaced', sa.Boolean(), nullable=False, server_default=sa.false()))
            batch_op.drop_constraint(old, type_='unique')
            batch_op.create_unique_constraint(new, ['device_id', 'epoch', 'seq'])
        if postgres:  # at 10k messages/s a 32-bit id runs out in under three days
            op.alter_column(table, 'id', type_=sa.BigInteger(), existing_type=sa.Integer())
            op.execute(f"ALTER SEQUENCE {table}_id_seq AS bigint")
    with op.batch_alter_table('telemetry_rollup', schema=None) as batch_op:
        batch_op.alter_column('count', type_=sa.BigInteger(), existing_type=sa.Integer())
        batch_op.alter_column('errors', type_=sa.BigInteger(), existing_type=sa.Integer())
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.alter_column('session', type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)
        batch_op.add_column(sa.Column('epoch', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('pending_token_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('pending_since', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('rejected', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('rejected_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('rejected_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('ts_replaced', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.create_unique_constraint('uq_devices_pending_token_hash', ['pending_token_hash'])
    op.create_table('enrollment_tokens',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device_id'),
    sa.UniqueConstraint('token_hash')
    )


def downgrade() -> None:
    op.drop_table('enrollment_tokens')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_constraint('uq_devices_pending_token_hash', type_='unique')
        for column in ('ts_replaced', 'rejected_at', 'rejected_reason', 'rejected', 'pending_since',
                       'pending_token_hash', 'epoch'):
            batch_op.drop_column(column)
        batch_op.alter_column('session', type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
    with op.batch_alter_table('telemetry_rollup', schema=None) as batch_op:
        batch_op.alter_column('count', type_=sa.Integer(), existing_type=sa.BigInteger())
        batch_op.alter_column('errors', type_=sa.Integer(), existing_type=sa.BigInteger())
    for table, old, new in (("telemetry", "uq_telemetry_seq", "uq_telemetry_epoch_seq"),
                            ("events", "uq_event_seq", "uq_event_epoch_seq")):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(new, type_='unique')
            batch_op.create_unique_constraint(old, ['device_id', 'seq'])
            batch_op.drop_column('ts_replaced')
            batch_op.drop_column('epoch')
