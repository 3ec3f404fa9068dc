"""The ``registry`` generation: bumped when what a manifest may name changes (variants, deltas)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.server.db.models import Counter


def bump(session: Session, *, name: str = "registry") -> None:
    row = session.get(Counter, name)
    if row is None:
        session.add(Counter(name=name, value=1))
    else:
        row.value = row.value + 1


def read(session: Session, *, name: str = "registry") -> int:
    return int(session.scalar(select(Counter.value).where(Counter.name == name)) or 0)
