"""Raw psycopg statements on a session's connection, for the ingest writer's set-based PostgreSQL paths.

Bulk values travel as one JSON text parameter (``json_to_recordset`` / ``json_array_elements_text`` on the
server): ``json.dumps`` runs in C, where psycopg dumps a Python list element by element (several ms for a
batch's few thousand values). psycopg errors are raised as SQLAlchemy's ``DBAPIError`` classes, like every
other statement, so the writer tells a busy database from one that refuses what it was given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    import psycopg


def json_param(values: Any) -> str:
    """``values`` (lists, dicts, numbers, strings, None) as compact JSON text for a ``%s::json`` parameter."""
    return json.dumps(values, separators=(",", ":"), allow_nan=False)


@contextmanager
def cursor(session: Session, what: str) -> Iterator[psycopg.Cursor[Any]]:
    """A psycopg cursor in the session's transaction; an error in the block is raised as ``DBAPIError`` of
    ``what`` (the statement to name)."""
    import psycopg

    connection = cast("psycopg.Connection[Any]", session.connection().connection.dbapi_connection)
    try:
        with connection.cursor() as raw:
            yield raw
    except psycopg.Error as exc:
        raise DBAPIError.instance(what, None, exc, psycopg.Error) from exc


def execute(session: Session, statement: str, params: Sequence[Any] = (), *,
            fetch: bool = False) -> list[tuple[Any, ...]]:
    """Run one statement in the session's transaction; its rows when ``fetch``."""
    with cursor(session, statement) as raw:
        raw.execute(statement, params)
        return list(raw.fetchall()) if fetch else []


__all__ = ["cursor", "execute", "json_param"]
