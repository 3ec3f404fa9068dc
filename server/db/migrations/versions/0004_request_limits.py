"""request limits: what each device's manifest offered it (downloads are limited to it), sample allowances and sizes

Revision ID: 0004
Revises: 0005
Create Date: 2026-12-01 12:00:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offered', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('samples_allowed', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('samples_until', sa.Float(), nullable=True))
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.add_column(sa.Column('image_bytes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.drop_column('image_bytes')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('samples_until')
        batch_op.drop_column('samples_allowed')
        batch_op.drop_column('offered')
