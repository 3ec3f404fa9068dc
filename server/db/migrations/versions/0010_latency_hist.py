"""latency histograms: one row per telemetry message on the contract's buckets, hourly merges of older ones,
and the fleet's per-minute sums by model version and device class

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 01:30:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    row_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table('latency_hist',
    sa.Column('id', row_id, nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('epoch', sa.BigInteger(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=True),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('i0', sa.Integer(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'epoch', 'seq', name='uq_latency_hist_epoch_seq')
    )
    op.create_index('ix_latency_hist_device_ts', 'latency_hist', ['device_id', 'ts'], unique=False)
    op.create_table('latency_hist_hourly',
    sa.Column('id', row_id, nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('hour', sa.Float(), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('i0', sa.Integer(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'hour', 'model_name', 'model_version', name='uq_latency_hist_hourly')
    )
    op.create_index('ix_latency_hist_hourly_hour', 'latency_hist_hourly', ['hour'], unique=False)
    op.create_table('latency_minute',
    sa.Column('minute', sa.Float(), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=False),
    sa.Column('device_class', sa.String(length=64), nullable=False),
    sa.Column('k', sa.Integer(), nullable=False),
    sa.Column('n', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('minute', 'model_name', 'model_version', 'device_class', 'k')
    )


def downgrade() -> None:
    op.drop_table('latency_minute')
    op.drop_index('ix_latency_hist_hourly_hour', table_name='latency_hist_hourly')
    op.drop_table('latency_hist_hourly')
    op.drop_index('ix_latency_hist_device_ts', table_name='latency_hist')
    op.drop_table('latency_hist')
