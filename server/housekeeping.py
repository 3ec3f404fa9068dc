"""Garbage collection of stored files that nothing can ask for any more (run with telemetry retention).

- **Patches**: a delta row (and its patch file) is kept while some manifest can still offer it: a device
  runs its ``from`` and its desired version has ``to`` among its variants, or a device in a running or
  paused rollout runs ``from`` and the rollout's version has ``to``. Others go after ``PATCH_GRACE_S``.
- **Samples**: past ``samples.retention_days``, and beyond ``samples.max_total_mb`` of images the oldest
  go first, unlabelled ones before labelled ones (a label is an operator's work).

A file is deleted only when no row of any table (versions, variants, deltas, samples) names it any more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from edgefleet.server.config import SamplesSection
from edgefleet.server.crud.counters import bump
from edgefleet.server.db import Database
from edgefleet.server.db.models import Delta, Device, ModelVersion, Rollout, RolloutDevice, Sample, Variant
from edgefleet.server.storage import ArtifactStore

log = logging.getLogger("edgefleet.server.housekeeping")
PATCH_GRACE_S = 3600.0  # a patch just made for a rollout that is about to be created is not collected
ACTIVE_ROLLOUT = ("running", "paused")


@dataclass(frozen=True)
class Collected:
    patches: int
    samples: int
    files: int


def live_delta_pairs(session: Session) -> set[tuple[str, str]]:
    """(from, to) pairs a manifest can still offer (a superset: every variant of the version counts)."""
    desired = (select(Device.model_sha256, Variant.sha256)
               .join(Variant, Variant.version_id == Device.desired_version_id)
               .where(Device.model_sha256.is_not(None), Variant.sha256.is_not(None)).distinct())
    rolling = (select(Device.model_sha256, Variant.sha256)
               .join(RolloutDevice, RolloutDevice.device_id == Device.id)
               .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
               .join(Variant, Variant.version_id == Rollout.version_id)
               .where(Rollout.state.in_(ACTIVE_ROLLOUT), Device.model_sha256.is_not(None),
                      Variant.sha256.is_not(None)).distinct())
    pairs: set[tuple[str, str]] = set()
    for query in (desired, rolling):
        pairs.update((str(a), str(b)) for a, b in session.execute(query))
    return pairs


def unreferenced(session: Session, shas: set[str]) -> set[str]:
    if not shas:
        return set()
    named: set[str] = set()
    for column in (ModelVersion.sha256, ModelVersion.calibration_sha256, Variant.sha256, Delta.sha256,
                   Sample.image_sha256):
        named.update(str(v) for v in session.scalars(select(column).where(column.in_(shas))))
    return shas - named


def collect_patches(session: Session, *, now: float) -> tuple[int, set[str]]:
    """Drop delta rows no manifest can offer; (rows dropped, patch files nothing names any more)."""
    live = live_delta_pairs(session)
    dead = [row for row in session.scalars(select(Delta))
            if (row.from_sha256, row.to_sha256) not in live and row.created_at < now - PATCH_GRACE_S]
    for row in dead:
        session.delete(row)
    if dead:
        session.flush()
        bump(session)  # cached manifests that offered one of them are signed again, without it
    return len(dead), unreferenced(session, {row.sha256 for row in dead})


def collect_samples(session: Session, section: SamplesSection, *, now: float) -> tuple[int, set[str]]:
    """Drop samples past retention and beyond the size cap; (rows dropped, image files nothing names)."""
    doomed: set[str] = set()
    expired = list(session.execute(select(Sample.device_id, Sample.id, Sample.image_sha256)
                                   .where(Sample.created_at < now - section.retention_days * 86400)))
    cap = int(section.max_total_mb * 1024 * 1024)
    kept = list(session.execute(
        select(Sample.device_id, Sample.id, Sample.image_sha256, Sample.image_bytes)
        .where(Sample.created_at >= now - section.retention_days * 86400)
        .order_by(Sample.labelled_at.is_(None).desc(), Sample.created_at)))  # unlabelled oldest first
    total = sum(int(size or 0) for *_, size in kept)
    over: list[tuple[str, str, str | None]] = []
    for device_id, sample_id, sha, size in kept:
        if total <= cap:
            break
        over.append((device_id, sample_id, sha))
        total -= int(size or 0)
    gone = [(d, i, s) for d, i, s in expired] + over
    for device_id, sample_id, sha in gone:
        session.execute(delete(Sample).where(Sample.device_id == device_id, Sample.id == sample_id))
        if sha:
            doomed.add(sha)
    if gone:
        session.flush()
    return len(gone), unreferenced(session, doomed)


def collect(db: Database, store: ArtifactStore, section: SamplesSection, *, now: float) -> Collected:
    with db.session() as session:
        patches, patch_files = collect_patches(session, now=now)
        samples, image_files = collect_samples(session, section, now=now)
    files = patch_files | image_files
    for sha in files:  # after the commit: a row never names a deleted file
        try:
            store.delete(sha)
        except OSError as exc:
            log.warning("could not delete %s: %s", sha, exc)
    if patches or samples:
        log.info("collected %d patches and %d samples (%d files)", patches, samples, len(files))
    return Collected(patches, samples, len(files))


__all__ = ["Collected", "collect", "collect_patches", "collect_samples", "live_delta_pairs", "unreferenced"]
