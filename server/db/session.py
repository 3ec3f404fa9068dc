"""Engine and sessions: SQLite (WAL, busy timeout) by default, PostgreSQL via psycopg 3."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.agent.errors import ConfigError

MIGRATIONS = Path(__file__).with_name("migrations")


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy would pick psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str, connections: int = 16) -> Engine:
    """An engine whose pool holds up to ``connections`` (half kept open, half overflow)."""
    url = normalize_url(url)
    pool = {"pool_size": max(1, connections // 2), "max_overflow": max(0, connections - connections // 2)}
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, **pool)
    raise ConfigError(f"database_url {url!r}: only sqlite:/// and postgresql:// are supported")


# pg_advisory_xact_lock keys (any bigint; these spell "edgefleet migrate" and "edgefleet rollouts")
MIGRATION_LOCK = 0x6564676566_6d67
ROLLOUT_LOCK = 0x6564676566_726f


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (run at start-up). On PostgreSQL the upgrade runs
    under a transaction-scoped advisory lock: replicas starting together take turns, and the ones after the
    first find the schema at head."""
    cfg = _alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def head_revision() -> str | None:
    """The newest revision this code knows."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def schema_revision(engine: Engine) -> str | None:
    """The revision the database is at (raises when the database does not answer)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


class Database:
    """The engine and a session factory; ``session()`` is a transaction that commits on success."""

    def __init__(self, url: str, connections: int = 16) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url, connections)
        self.factory = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.factory() as session, session.begin():
            yield session

    def now(self, session: Session) -> float:
        """The database's clock in UNIX seconds (PostgreSQL), so replicas with skewed clocks agree on
        lease and claim expiry; SQLite runs in one process: this machine's clock."""
        if self.dialect == "postgresql":
            return float(session.scalar(text("SELECT extract(epoch FROM clock_timestamp())")))
        return time.time()

    @cached_property
    def loop_engine(self) -> Engine:
        """One connection for the event loop's own short reads (the check-in's hot path): the loop never waits
        for the shared pool, whose connections the sessions of request threads hold until the loop itself
        closes them (waiting there deadlocked the server once every connection was held)."""
        return make_engine(self.url, 1)

    def dispose(self) -> None:
        self.engine.dispose()
        if "loop_engine" in self.__dict__:
            self.loop_engine.dispose()
