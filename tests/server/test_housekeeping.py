"""Garbage collection (server/housekeeping.py) on a real SQLite database and artifact directory."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from edgefleet.server.config import SamplesSection
from edgefleet.server.crud import registry
from edgefleet.server.crud.deltas import record_delta
from edgefleet.server.crud.devices import enroll_device
from edgefleet.server.db import Database, migrate
from edgefleet.server.db.models import Delta, Device, Rollout, RolloutDevice, Sample
from edgefleet.server.housekeeping import PATCH_GRACE_S, collect
from edgefleet.server.storage import LocalStore

DAY = 86400.0


def put(store: LocalStore, data: bytes) -> str:
    return store.put_stream(io.BytesIO(data))[0]


def setup(tmp_path: Path) -> tuple[Database, LocalStore, dict[str, str]]:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(db.engine)
    store = LocalStore(tmp_path / "artifacts")
    shas = {name: put(store, name.encode() * 1000) for name in ("v1", "v2", "v3")}
    with db.session() as session:
        versions = {}
        for name in ("v1", "v2", "v3"):
            _, row = registry.create_version(session, name="m", sha256=shas[name], size=3000, fmt="onnx",
                                             task="other", inputs=[], outputs=[], labels=None, preprocess=None,
                                             runtime_hints=None, calibration_sha256=None)
            versions[name] = row.id
        enroll_device(session, device_id="runs-v1", device_class=None, tags=[], hw={})
        enroll_device(session, device_id="idle", device_class=None, tags=[], hw={})
        session.flush()
        device = session.get(Device, "runs-v1")
        assert device is not None
        device.model_sha256, device.desired_version_id = shas["v1"], versions["v2"]
        rollout = Rollout(version_id=versions["v3"], target={}, waves=[1], waves_spec=[100], gates={},
                          state="running", current_wave=0, created_at=0.0, updated_at=0.0)
        session.add(rollout)
        session.flush()
        session.add(RolloutDevice(rollout_id=rollout.id, device_id="runs-v1", wave=0, state="pending"))
    return db, store, shas


def test_patches_no_manifest_can_offer_are_collected(tmp_path: Path) -> None:
    db, store, shas = setup(tmp_path)
    old = time.time() - 2 * PATCH_GRACE_S
    patches = {}
    with db.session() as session:
        for pair in (("v1", "v2"), ("v1", "v3"), ("v2", "v3"), ("v3", "v1")):
            patches[pair] = put(store, f"patch {pair}".encode())
            record_delta(session, from_sha256=shas[pair[0]], to_sha256=shas[pair[1]], sha256=patches[pair], size=1)
        fresh = put(store, b"a patch made a minute ago")
        record_delta(session, from_sha256=shas["v2"], to_sha256=shas["v1"], sha256=fresh, size=1)
        for row in session.query(Delta).filter(Delta.sha256 != fresh):
            row.created_at = old
    done = collect(db, store, SamplesSection(), now=time.time())
    # runs-v1 runs v1 and is desired on v2 (v1→v2) and in a running rollout to v3 (v1→v3): those stay
    assert (done.patches, done.files) == (2, 2)
    with db.session() as session:
        left = {(r.from_sha256, r.to_sha256) for r in session.query(Delta)}
    assert left == {(shas["v1"], shas["v2"]), (shas["v1"], shas["v3"]), (shas["v2"], shas["v1"])}
    assert store.exists(patches[("v1", "v2")]) and store.exists(fresh)
    assert not store.exists(patches[("v2", "v3")]) and not store.exists(patches[("v3", "v1")])
    assert all(store.exists(sha) for sha in shas.values())  # artifacts themselves are never collected


def add_sample(db: Database, store: LocalStore, device: str, index: int, *, created: float, size: int,
               labelled: bool = False, image: bytes | None = None) -> str:
    data = image if image is not None else b"\xff\xd8" + os.urandom(size - 2)
    sha = put(store, data)
    with db.session() as session:
        session.add(Sample(device_id=device, id=f"{index:013d}-0000000{index % 10}", model_name=None,
                           model_version=None, device_class=None, record={}, image_sha256=sha, image_bytes=len(data),
                           label=1 if labelled else None, labelled_at=created if labelled else None,
                           created_at=created))
    return sha


def test_samples_past_retention_or_the_size_cap_are_collected(tmp_path: Path) -> None:
    db, store, _ = setup(tmp_path)
    now = time.time()
    expired = add_sample(db, store, "idle", 1, created=now - 100 * DAY, size=1000, labelled=True)
    shared = b"\xff\xd8 the same image twice"
    twice = add_sample(db, store, "idle", 2, created=now - 100 * DAY, size=0, image=shared)
    add_sample(db, store, "idle", 3, created=now - 1 * DAY, size=0, image=shared)
    oldest = add_sample(db, store, "idle", 4, created=now - 5 * DAY, size=400_000)
    labelled = add_sample(db, store, "idle", 5, created=now - 6 * DAY, size=400_000, labelled=True)
    newest = add_sample(db, store, "idle", 6, created=now - 2 * DAY, size=400_000)
    section = SamplesSection(retention_days=90, max_total_mb=1.0)  # the three big ones do not fit together
    done = collect(db, store, section, now=now)
    with db.session() as session:
        left = {row.id[:13].lstrip("0") for row in session.query(Sample)}
    assert left == {"3", "5", "6"}  # expired ones go, then the oldest unlabelled one; the labelled one stays
    assert done.samples == 3
    assert not store.exists(expired) and not store.exists(oldest)
    assert store.exists(twice) and store.exists(labelled) and store.exists(newest)  # still named by a row
