"""tensor deltas: a delta per (from, to, algorithm), with what it holds

Revision ID: 0008
Revises: 0004
Create Date: 2026-12-01 10:00:00.000000
"""
from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0004'
branch_labels = None
depends_on = None


def _deltas(name: str, *, algorithm: bool) -> None:
    columns: list[sa.Column[Any]] = [sa.Column('from_sha256', sa.String(length=64), nullable=False),
               sa.Column('to_sha256', sa.String(length=64), nullable=False)]
    if algorithm:
        columns.append(sa.Column('algorithm', sa.String(length=16), nullable=False))
    columns += [sa.Column('sha256', sa.String(length=64), nullable=False),
                sa.Column('size', sa.BigInteger(), nullable=False),
                sa.Column('created_at', sa.Float(), nullable=False)]
    if algorithm:
        columns.append(sa.Column('report', sa.JSON(), nullable=True))
    keys = ['from_sha256', 'to_sha256', 'algorithm'] if algorithm else ['from_sha256', 'to_sha256']
    op.create_table(name, *columns, sa.PrimaryKeyConstraint(*keys, name=f'pk_{name}'))


def upgrade() -> None:
    # the primary key grows a column: a new table, the rows copied over, then renamed (SQLite and PostgreSQL)
    _deltas('deltas_new', algorithm=True)
    op.execute("INSERT INTO deltas_new (from_sha256, to_sha256, algorithm, sha256, size, created_at) "
               "SELECT from_sha256, to_sha256, 'bsdiff4', sha256, size, created_at FROM deltas")
    op.drop_table('deltas')
    op.rename_table('deltas_new', 'deltas')


def downgrade() -> None:
    _deltas('deltas_old', algorithm=False)
    op.execute("INSERT INTO deltas_old (from_sha256, to_sha256, sha256, size, created_at) "
               "SELECT from_sha256, to_sha256, sha256, size, created_at FROM deltas WHERE algorithm = 'bsdiff4'")
    op.drop_table('deltas')
    op.rename_table('deltas_old', 'deltas')
