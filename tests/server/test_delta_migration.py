"""Migration 0008 on SQLite and PostgreSQL: deltas gain an algorithm in their key; existing rows are bsdiff4."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from edgefleet.server.db import Database
from edgefleet.server.db.session import MIGRATIONS
from tests.support.databases import database_url, postgres_reason

PG_SKIP = postgres_reason()
A, B, P, Q = "a" * 64, "b" * 64, "c" * 64, "d" * 64


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[
    pytest.mark.postgres, pytest.mark.skipif(PG_SKIP is not None, reason=PG_SKIP or "")])])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database_url(request.param, tmp_path) as url:
        database = Database(url)
        try:
            yield database
        finally:
            database.dispose()


def _alembic(db: Database, action: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        getattr(command, action)(cfg, revision)


def test_deltas_keep_their_rows_and_gain_an_algorithm(db: Database) -> None:
    _alembic(db, "upgrade", "0002")
    with db.engine.begin() as connection:
        connection.execute(text("INSERT INTO deltas (from_sha256, to_sha256, sha256, size, created_at) "
                                "VALUES (:a, :b, :p, 10, 1.0)"), {"a": A, "b": B, "p": P})
    _alembic(db, "upgrade", "0008")
    with db.engine.begin() as connection:
        rows = connection.execute(text("SELECT from_sha256, to_sha256, algorithm, sha256, size, report "
                                       "FROM deltas")).all()
        assert [tuple(r) for r in rows] == [(A, B, "bsdiff4", P, 10, None)]
        connection.execute(text("INSERT INTO deltas (from_sha256, to_sha256, algorithm, sha256, size, created_at) "
                                "VALUES (:a, :b, 'tensor', :q, 7, 2.0)"), {"a": A, "b": B, "q": Q})
        with pytest.raises(IntegrityError), connection.begin_nested():
            connection.execute(text("INSERT INTO deltas (from_sha256, to_sha256, algorithm, sha256, size, "
                                    "created_at) VALUES (:a, :b, 'tensor', :q, 8, 3.0)"), {"a": A, "b": B, "q": Q})
    _alembic(db, "downgrade", "0002")
    with db.engine.begin() as connection:
        rows = connection.execute(text("SELECT from_sha256, to_sha256, sha256, size FROM deltas")).all()
        assert [tuple(r) for r in rows] == [(A, B, P, 10)]
