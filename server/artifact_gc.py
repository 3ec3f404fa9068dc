"""Garbage collection of the artifact store: delete what no row names any more.

Rows that name an artifact: a model version (its file and calibration), a variant, a delta (the
patch), a ground-truth sample's image. What is left over comes from uploads refused after the file was
stored, variant builds replaced or interrupted, patches made for a delta whose row never landed.
An artifact younger than ``grace_s`` is never deleted: it may be a file just stored whose row is
about to be committed, by this replica or another (storing a file that is already there renews its
time, so an old orphan uploaded again is young again).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, union
from sqlalchemy.orm import Session

from edgefleet.server.db import Database
from edgefleet.server.db.models import Delta, ModelVersion, Sample, Variant
from edgefleet.server.storage import ArtifactStore

log = logging.getLogger("edgefleet.server.gc")


@dataclass(frozen=True)
class Collected:
    deleted: int
    freed_bytes: int
    kept: int


def referenced(session: Session) -> set[str]:
    names: Any = union(select(ModelVersion.sha256), select(ModelVersion.calibration_sha256), select(Variant.sha256),
                  select(Delta.sha256), select(Sample.image_sha256))
    return {sha for sha in session.scalars(select(names.subquery().c[0])) if sha}


def collect(db: Database, store: ArtifactStore, *, grace_s: float, now: float | None = None) -> Collected:
    """Delete every stored artifact older than ``grace_s`` that no row names."""
    now = now if now is not None else time.time()
    with db.session() as session:
        keep = referenced(session)
    stored = list(store.list())
    candidates = {sha for sha, stored_at, _ in stored if sha not in keep and stored_at <= now - grace_s}
    if candidates:  # read again after listing: a row committed meanwhile naming an old file keeps it
        with db.session() as session:
            candidates -= referenced(session)
    deleted = freed = kept = 0
    for sha256, _stored_at, size in stored:
        if sha256 not in candidates:
            kept += 1
            continue
        store.delete(sha256)
        deleted += 1
        freed += size
    if deleted:
        log.info("gc: deleted %d unreferenced artifacts (%d bytes)", deleted, freed)
    return Collected(deleted, freed, kept)
