"""model quality: drift reference profiles, shadow figures per rollout device, ground-truth samples

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 10:00:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('drift_profile', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('drift_profile_source', sa.String(length=32), nullable=True))
    with op.batch_alter_table('rollout_devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shadow', sa.JSON(), nullable=True))
    op.create_table('samples',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=True),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('device_class', sa.String(length=64), nullable=True),
    sa.Column('record', sa.JSON(), nullable=False),
    sa.Column('image_sha256', sa.String(length=64), nullable=True),
    sa.Column('label', sa.JSON(), nullable=True),
    sa.Column('labelled_at', sa.Float(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'id')
    )
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.create_index('ix_samples_model', ['model_name', 'model_version'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.drop_index('ix_samples_model')
    op.drop_table('samples')
    with op.batch_alter_table('rollout_devices', schema=None) as batch_op:
        batch_op.drop_column('shadow')
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('drift_profile_source')
        batch_op.drop_column('drift_profile')
