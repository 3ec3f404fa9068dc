"""Database URLs for storage tests: a SQLite file, or a fresh schema in the local PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_reason() -> str | None:
    """None when PostgreSQL answers, else why the PostgreSQL tests are skipped."""
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=2):
            return None
    except Exception as exc:
        return f"PostgreSQL at 127.0.0.1:5432/test is not reachable: {exc.__class__.__name__}: {exc}"


@contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of ``kind`` (sqlite | postgresql); a PostgreSQL schema is dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'edgefleet.db'}"
        return
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def migrated_database(kind: str, tmp_path: Path, devices: tuple[str, ...] = ()) -> Iterator[Any]:
    """An empty database of ``kind`` at the head revision, with ``devices`` enrolled (no class, no tags)."""
    from edgefleet.server.crud import devices as device_crud
    from edgefleet.server.db.session import Database, migrate

    with database_url(kind, tmp_path) as url:
        database = Database(url)
        migrate(database.engine)
        with database.session() as session:
            for device_id in devices:
                device_crud.enroll_device(session, device_id=device_id, device_class=None, tags=[], hw={})
        try:
            yield database
        finally:
            database.dispose()
