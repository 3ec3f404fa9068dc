"""Cached patches between two artifacts (bsdiff4 or tensor), and the delta-q8 variants built from them."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.server.crud.counters import bump
from edgefleet.server.db.models import Delta, Variant

ALGORITHMS = ("bsdiff4", "tensor")


def get_delta(session: Session, *, from_sha256: str, to_sha256: str, algorithm: str = "bsdiff4") -> Delta | None:
    return session.get(Delta, (from_sha256, to_sha256, algorithm))


def deltas_between(session: Session, *, from_sha256: str, to_sha256: str) -> list[Delta]:
    query = select(Delta).where(Delta.from_sha256 == from_sha256, Delta.to_sha256 == to_sha256)
    return list(session.scalars(query.order_by(Delta.algorithm)))


def deltas_to(session: Session, *, to_sha256s: list[str]) -> list[Delta]:
    if not to_sha256s:
        return []
    query = select(Delta).where(Delta.to_sha256.in_(to_sha256s)).order_by(Delta.to_sha256, Delta.from_sha256)
    return list(session.scalars(query))


def record_delta(session: Session, *, from_sha256: str, to_sha256: str, sha256: str, size: int,
                 algorithm: str = "bsdiff4", report: dict[str, Any] | None = None) -> Delta:
    row = session.get(Delta, (from_sha256, to_sha256, algorithm))
    if row is None:
        row = Delta(from_sha256=from_sha256, to_sha256=to_sha256, algorithm=algorithm, sha256=sha256, size=size,
                    report=report, created_at=time.time())
        session.add(row)
    else:
        row.sha256, row.size, row.report = sha256, size, report
    bump(session)
    return row


def put_delta_variant(session: Session, *, version_id: int, name: str, status: str, sha256: str | None,
                      size: int | None, fmt: str | None, report: dict[str, Any]) -> Variant:
    """Create or replace a delta-q8 variant row (ready or failed) of a version."""
    row = session.scalars(select(Variant).where(Variant.version_id == version_id, Variant.name == name)).first()
    if row is None:
        row = Variant(version_id=version_id, name=name, device_classes=[], created_at=time.time())
        session.add(row)
    row.status, row.sha256, row.size, row.format, row.report = status, sha256, size, fmt, report
    bump(session)
    session.flush()
    return row
