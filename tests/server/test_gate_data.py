"""server/crud/gate_data.py on SQLite and PostgreSQL: which telemetry the latency gate sees."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import registry, rollouts, telemetry
from edgefleet.server.crud.gate_data import latency_data
from edgefleet.server.db import Database
from edgefleet.server.latency_gate import LatencySettings
from tests.support.databases import migrated_database, postgres_reason
from tests.support.gates import latency_sample, report_committed

PG_SKIP = postgres_reason()
SETTINGS = LatencySettings(warmup_s=10.0, baseline_s=100.0, min_samples=3)


sample = functools.partial(latency_sample, model="gd")
commit = functools.partial(report_committed, model="gd")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[
    pytest.mark.postgres, pytest.mark.skipif(PG_SKIP is not None, reason=PG_SKIP or "")])])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with migrated_database(request.param, tmp_path) as database:
        yield database


def test_windows_baselines_and_raw_values(db: Database) -> None:
    ids = [f"gd{i}" for i in range(6)]
    with db.session() as s:
        for i, device_id in enumerate(ids):
            device_crud.enroll_device(s, device_id=device_id, device_class="rpi4" if i < 5 else "jetson",
                                      tags=["gd"], hw={})
        for sha in ("a" * 64, "b" * 64):
            registry.create_version(s, name="gd", sha256=sha, size=10, fmt="onnx", task="other", inputs=[],
                                    outputs=[], labels=None, preprocess=None, runtime_hints=None,
                                    calibration_sha256=None)
    with db.session() as s:
        _, v1 = registry.get_version(s, name="gd", version=1)
        first = rollouts.create_rollout(s, version_id=v1.id, target={"tags": ["gd"]}, waves=[100], gates={},
                                        priority=0, trial=None, shadow=None, auto_revert=False, now=0.0)
        rollouts.start_wave(s, rollout=first, wave=0, now=1.0)
    for device_id in ids:
        commit(db, device_id, 1, 2.0)
    with db.session() as s:
        _, v2 = registry.get_version(s, name="gd", version=2)
        rollout = rollouts.create_rollout(s, version_id=v2.id, target={"tags": ["gd"]}, waves={"counts": [2, 6]},
                                          gates={}, priority=0, trial=None, shadow=None, auto_revert=False,
                                          now=1000.0)
        rollouts.start_wave(s, rollout=rollout, wave=0, now=1000.0)
        rollout_id = rollout.id
        updated = sorted(r.device_id for r in rollouts.rollout_devices(s, rollout_id=rollout_id) if r.wave == 0)
    controls = sorted(set(ids) - set(updated))
    rows = []
    for device_id in ids:  # before: 4 messages at 2 ms inside the 100 s window, one older at 50 ms
        rows.append(sample(device_id, 1, 850.0, 1, 50.0))
        rows += [sample(device_id, 2 + k, 950.0 + k, 1, 2.0) for k in range(4)]
    for device_id in updated:
        commit(db, device_id, 2, 1010.0)
        commit(db, device_id, 2, 1015.0)  # a repeated commit report keeps the commit time
        rows.append(sample(device_id, 10, 1015.0, 2, 99.0))  # inside the warm-up
        rows += [sample(device_id, 11 + k, 1021.0 + k, 2, 4.0) for k in range(3)]
    for device_id in controls:
        rows.append(sample(device_id, 9, 1012.0, 1, 77.0))  # before the window opens (1010 + 10)
        rows += [sample(device_id, 10 + k, 1021.0 + k, 1, 3.0) for k in range(2)]
        rows.append(sample(device_id, 20, 1030.0, 1, 3.0, model="other-model"))  # another model: not counted
    with db.session() as s:
        telemetry.insert_telemetry(s, rows=rows)
    with db.session() as s:
        rollout = rollouts.get_rollout(s, rollout_id=rollout_id)
        data = latency_data(s, rollout=rollout, settings=SETTINGS)
    assert data.reporting
    by_id = {w.device_id: w for w in data.updated}
    assert sorted(by_id) == updated
    for w in by_id.values():
        assert (w.mean_ms, w.samples, w.baseline_ms) == (4.0, 3, 2.0)
    ctl = {w.device_id: w for w in data.control}
    assert sorted(ctl) == controls
    for w in ctl.values():
        assert (w.mean_ms, w.samples, w.baseline_ms) == (3.0, 2, 2.0)
    # the canaries of rollout 2 are gd0 and gd3 (a hash of rollout and device ids): 2 updated rpi4s against 3
    # rpi4 controls (and a jetson) are too few for cohorts, so the raw values come too
    assert {w.device_class for w in data.updated} == {"rpi4"}
    assert data.paired is not None and data.control_paired is not None
    assert {p.device_id: (p.before, p.after) for p in data.paired} == {d: ((2.0,) * 4, (4.0,) * 3) for d in updated}
    assert {p.device_id for p in data.control_paired} == {w.device_id for w in data.control
                                                         if w.device_class == "rpi4"}
    assert all(p.before == (2.0,) * 4 and p.after == (3.0, 3.0) for p in data.control_paired)


def test_no_telemetry_is_not_reporting(db: Database) -> None:
    with db.session() as s:
        device_crud.enroll_device(s, device_id="quiet", device_class=None, tags=["quiet"], hw={})
        registry.create_version(s, name="gd", sha256="c" * 64, size=10, fmt="onnx", task="other", inputs=[],
                                outputs=[], labels=None, preprocess=None, runtime_hints=None, calibration_sha256=None)
    with db.session() as s:
        _, v = registry.get_version(s, name="gd", version=1)
        rollout = rollouts.create_rollout(s, version_id=v.id, target={"tags": ["quiet"]}, waves=[100], gates={},
                                          priority=0, trial=None, shadow=None, auto_revert=False, now=0.0)
        rollouts.start_wave(s, rollout=rollout, wave=0, now=1.0)
        rollout_id = rollout.id
    commit(db, "quiet", 1, 2.0)
    with db.session() as s:
        data = latency_data(s, rollout=rollouts.get_rollout(s, rollout_id=rollout_id), settings=SETTINGS)
    assert not data.reporting
    assert [(w.device_id, w.samples) for w in data.updated] == [("quiet", 0)]
