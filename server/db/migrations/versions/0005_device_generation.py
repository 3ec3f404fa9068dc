"""devices.generation: grows whenever a device's desired state changes; manifests carry it (anti-replay)

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('generation', sa.BigInteger(), nullable=False, server_default='0'))
    # a device that already has a desired state starts at 1, above what an agent that never saw one holds
    op.execute("UPDATE devices SET generation = 1 WHERE desired_version_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('generation')
