"""server/rollouts.py's step: the latency gate's data is reused while a wave commits and soaks, and read again
before a decision that ends the wait, so that decision sees every committed device."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.server import rollouts as engine
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import registry, rollouts, telemetry
from edgefleet.server.db import Database
from tests.support.databases import migrated_database
from tests.support.gates import latency_sample, report_committed

DEVICES = [f"gc{i:02d}" for i in range(20)]


sample = functools.partial(latency_sample, model="gc")
commit = functools.partial(report_committed, model="gc")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with migrated_database("sqlite", tmp_path) as database:
        yield database


def test_a_wave_is_judged_on_fresh_data_though_ticks_reuse_it(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[float] = []
    real = engine.latency_data

    def counted(session: Any, **kwargs: Any) -> Any:
        reads.append(1.0)
        return real(session, **kwargs)

    monkeypatch.setattr(engine, "latency_data", counted)
    monkeypatch.setattr(engine, "_latency_cache", {})
    monkeypatch.setattr(engine, "LATENCY_REFRESH_S", 1000.0)  # only the committed count and the decision matter
    with db.session() as s:
        for device_id in DEVICES:
            device_crud.enroll_device(s, device_id=device_id, device_class="rpi4", tags=["gc"], hw={})
        for sha in ("a" * 64, "b" * 64):
            registry.create_version(s, name="gc", sha256=sha, size=10, fmt="onnx", task="other", inputs=[],
                                    outputs=[], labels=None, preprocess=None, runtime_hints=None,
                                    calibration_sha256=None)
    with db.session() as s:
        _, v1 = registry.get_version(s, name="gc", version=1)
        first = rollouts.create_rollout(s, version_id=v1.id, target={"tags": ["gc"]}, waves=[100], gates={},
                                        priority=0, trial=None, shadow=None, auto_revert=False, push=False, now=0.0)
        rollouts.start_wave(s, rollout=first, wave=0, now=1.0)
        first.state = "completed"
    for device_id in DEVICES:
        commit(db, device_id, 1, 2.0)
    with db.session() as s:
        telemetry.insert_telemetry(s, rows=[sample(d, k, 950.0 + k, 1, 2.0 + 0.01 * k) for d in DEVICES
                                            for k in range(4)])
        _, v2 = registry.get_version(s, name="gc", version=2)
        rollout_id = rollouts.create_rollout(s, version_id=v2.id, target={"tags": ["gc"]}, waves={"counts": [8, 12]},
                                             gates={"soak_s": 5.0}, priority=0, trial=None, shadow=None,
                                             auto_revert=False, push=False, now=1000.0).id
    assert engine.step(db, rollout_id=rollout_id, now=1000.0).action == "wait"  # type: ignore[union-attr]
    assert len(reads) == 1
    with db.session() as s:
        updated = sorted(r.device_id for r in rollouts.rollout_devices(s, rollout_id=rollout_id) if r.wave == 0)
    assert len(updated) == 8
    for device_id in updated:
        commit(db, device_id, 2, 1001.0)
    with db.session() as s:  # the new version 2x slower after the warm-up; the control as before
        telemetry.insert_telemetry(s, rows=[sample(d, 10 + k, 1012.0 + k, 2 if d in updated else 1,
                                                   (4.0 if d in updated else 2.0) + 0.01 * k)
                                            for d in DEVICES for k in range(4)])

    soaking = engine.step(db, rollout_id=rollout_id, now=1001.5)
    assert soaking is not None and soaking.action == "wait" and len(reads) == 1  # committing and soaking: reused

    # the soak is over; the data read before any device committed shows nothing to judge, so a verdict on it
    # would advance: the step reads again and the fresh data pauses the wave
    decided = engine.step(db, rollout_id=rollout_id, now=1020.0)
    assert decided is not None and decided.action == "pause", decided
    assert len(reads) == 2
    assert (decided.reason or "").startswith("wave 1: p95 latency x1.99 (updated 4.01 ms, n=8 devices"), decided.reason
    with db.session() as s:
        assert rollouts.get_rollout(s, rollout_id=rollout_id).state == "paused"
