"""Cached bsdiff4 patches between two artifacts."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from server.crud.counters import bump
from server.db.models import Delta


def get_delta(session: Session, *, from_sha256: str, to_sha256: str) -> Delta | None:
    return session.get(Delta, (from_sha256, to_sha256))


def record_delta(session: Session, *, from_sha256: str, to_sha256: str, sha256: str, size: int) -> Delta:
    row = session.get(Delta, (from_sha256, to_sha256))
    if row is None:
        row = Delta(from_sha256=from_sha256, to_sha256=to_sha256, sha256=sha256, size=size, created_at=time.time())
        session.add(row)
        bump(session)
    return row
