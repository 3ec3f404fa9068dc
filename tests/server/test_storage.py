"""The data layer on SQLite and PostgreSQL: migrations, registry, insert-ignore, retention, rollouts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.wire import Birth, UpdateReport, Will
from edgefleet.server.crud import Invalid, registry, rollouts, telemetry
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.db import Database, migrate
from edgefleet.server.storage import LocalStore, TooLarge
from tests.support.databases import database_url, postgres_reason

PG_SKIP = postgres_reason()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[
    pytest.mark.postgres, pytest.mark.skipif(PG_SKIP is not None, reason=PG_SKIP or "")])])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database_url(request.param, tmp_path) as url:
        database = Database(url)
        migrate(database.engine)
        migrate(database.engine)  # idempotent at every start-up
        try:
            yield database
        finally:
            database.dispose()


def add_version(db: Database, name: str, sha: str) -> int:
    with db.session() as s:
        _, row = registry.create_version(s, name=name, sha256=sha, size=10, fmt="onnx", task="other", inputs=[],
                                         outputs=[], labels=None, preprocess=None, runtime_hints=None,
                                         calibration_sha256=None)
        return row.version


def test_versions_grow_and_reference_variant_exists(db: Database) -> None:
    assert [add_version(db, "m", c * 64) for c in "abc"] == [1, 2, 3]
    with db.session() as s:
        _, row = registry.get_version(s, name="m", version=2)
        assert [(v.name, v.sha256, v.status) for v in registry.list_variants(s, version_id=row.id)] == [
            ("reference", "b" * 64, "ready")]


def test_telemetry_duplicates_are_stored_once(db: Database) -> None:
    rows = [telemetry.telemetry_row("d1", {"seq": i, "ts": 100.0 + i, "inference": {"latency_ms": {"p95": i}}},
                                    200.0) for i in (1, 2, 3)]
    with db.session() as s:
        telemetry.insert_telemetry(s, rows=rows)
    with db.session() as s:
        telemetry.insert_telemetry(s, rows=[*rows[1:], telemetry.telemetry_row("d1", {"seq": 4, "ts": 104.0}, 200.0)])
        telemetry.insert_events(s, rows=[{"device_id": "d1", "seq": 1, "ts": 1.0, "type": "x", "payload": {}}] * 2)
    with db.session() as s:
        assert [r.seq for r in telemetry.list_telemetry(s, device_id="d1")] == [1, 2, 3, 4]
        assert [r.p95_ms for r in telemetry.list_telemetry(s, device_id="d1")] == [1.0, 2.0, 3.0, None]
        assert len(telemetry.list_events(s, device_id="d1")) == 1


def test_downsampling_folds_old_rows_into_hourly_rollups(db: Database) -> None:
    rows = [telemetry.telemetry_row("d2", {"seq": i, "ts": 3600.0 * 10 + i * 60,
                                           "inference": {"count": 5, "latency_ms": {"p95": float(i)}},
                                           "system": {"cpu_pct": 10.0}}, 0.0) for i in range(1, 5)]
    rows.append(telemetry.telemetry_row("d2", {"seq": 99, "ts": 3600.0 * 20}, 0.0))
    with db.session() as s:
        telemetry.insert_telemetry(s, rows=rows)
    with db.session() as s:
        folded, expired = telemetry.downsample_and_expire(s, downsample_before=3600.0 * 15, expire_before=0.0)
    assert (folded, expired) == (4, 0)
    with db.session() as s:
        assert [r.seq for r in telemetry.list_telemetry(s, device_id="d2")] == [99]
        (rollup,) = telemetry.list_rollups(s, device_id="d2")
        assert (rollup.bucket, rollup.samples, rollup.count, rollup.p95_ms, rollup.p95_max_ms, rollup.cpu_pct) == (
            36000.0, 4, 20, 2.5, 4.0, 10.0)
    with db.session() as s:
        assert telemetry.downsample_and_expire(s, downsample_before=0.0, expire_before=3600.0 * 11) == (0, 1)


def test_status_sessions_and_rollout_reports(db: Database) -> None:
    with db.session() as s:
        device_crud.enroll_device(s, device_id="d3", device_class="rpi4", tags=["lab"], hw={})
        assert telemetry.apply_status(s, device_id="d3", status=Birth(session=2, agent_version="t"), now=5.0)
        assert not telemetry.apply_status(s, device_id="d3", status=Will(session=1), now=6.0)
    add_version(db, "r", "d" * 64)
    with db.session() as s:
        device = device_crud.get_device(s, device_id="d3")
        assert device.online is True and device.session == 2
        _, version = registry.get_version(s, name="r", version=1)
        with pytest.raises(Invalid, match="matches no enrolled device"):
            rollouts.create_rollout(s, version_id=version.id, target={"tags": ["none"]}, waves=[100], gates={},
                                    priority=0, trial=None, shadow=None, auto_revert=False)
        rollout = rollouts.create_rollout(s, version_id=version.id, target={"tags": ["lab"]}, waves=[100],
                                          gates={}, priority=0, trial=None, shadow=None, auto_revert=False)
        rollouts.start_wave(s, rollout=rollout, wave=0, now=10.0)
        rollouts.record_report(s, device=device, report=UpdateReport(state="committed", model="r", version=1,
                                                                     sha256="d" * 64), now=11.0)
        (row,) = rollouts.rollout_devices(s, rollout_id=rollout.id)
        assert (row.state, device.model_sha256, device.desired_version_id) == ("committed", "d" * 64, version.id)


def test_status_epochs_let_a_reset_device_in_and_keep_late_wills_out(db: Database) -> None:
    """Sessions only grow within an epoch; a birth from another epoch (a reset spool counts from 1 again) is
    applied; a will from another epoch only when that epoch is newer; unenrolled ids make no row."""
    with db.session() as s:
        device_crud.enroll_device(s, device_id="e1", device_class=None, tags=[], hw={})
        assert telemetry.apply_status(s, device_id="e1", status=Birth(session=9, epoch=100, agent_version="t"), now=1)
        assert not telemetry.apply_status(s, device_id="e1", status=Will(session=8, epoch=100), now=2)
        assert telemetry.apply_status(s, device_id="e1", status=Birth(session=1, epoch=50, agent_version="t"), now=3)
        assert not telemetry.apply_status(s, device_id="e1", status=Will(session=9, epoch=40), now=4)  # older spool
        assert telemetry.apply_status(s, device_id="e1", status=Will(session=1, epoch=50), now=5)
        assert telemetry.apply_status(s, device_id="e1", status=Will(session=1, epoch=60), now=6)  # newer spool
        assert not telemetry.apply_status(s, device_id="ghost", status=Birth(session=1, agent_version="t"), now=7)
    with db.session() as s:
        device = device_crud.get_device(s, device_id="e1")
        assert (device.epoch, device.session, device.online) == (60, 1, False)
        assert [d.id for d in device_crud.list_devices(s)] == ["e1"]


def test_wave_aggregates_and_committed_p95(db: Database) -> None:
    """One query each: state tallies per wave, and the p95 gate's mean over telemetry with the new version
    sent after assignment (older telemetry and other versions do not count)."""
    with db.session() as s:
        for i in range(4):
            device_crud.enroll_device(s, device_id=f"agg{i}", device_class=None, tags=["agg"], hw={})
    add_version(db, "agg", "e" * 64)
    add_version(db, "agg", "f" * 64)
    with db.session() as s:
        _, version = registry.get_version(s, name="agg", version=2)
        rollout = rollouts.create_rollout(s, version_id=version.id, target={"tags": ["agg"]}, waves=[50, 100],
                                          gates={}, priority=0, trial=None, shadow=None, auto_revert=False)
        rollouts.start_wave(s, rollout=rollout, wave=0, now=100.0)
        rollout_id = rollout.id
        first = [r.device_id for r in rollouts.rollout_devices(s, rollout_id=rollout_id) if r.wave == 0]
    assert len(first) == 2

    def sample(device_id: str, seq: int, ts: float, version: int, p95: float) -> dict[str, object]:
        return telemetry.telemetry_row(device_id, {"seq": seq, "ts": ts, "model": {"name": "agg", "version": version},
                                                   "inference": {"latency_ms": {"p95": p95}}}, ts)

    with db.session() as s:
        telemetry.insert_telemetry(s, rows=[
            sample(first[0], 1, 90.0, 2, 100.0),  # before assignment
            sample(first[0], 2, 110.0, 2, 4.0), sample(first[0], 3, 120.0, 2, 6.0),
            sample(first[0], 4, 130.0, 1, 50.0),  # the old version
            sample(first[1], 1, 110.0, 2, 9.0)])  # not committed
        device = device_crud.get_device(s, device_id=first[0])
        rollouts.record_report(s, device=device, report=UpdateReport(state="committed", model="agg", version=2,
                                                                     sha256="f" * 64), now=111.0)
    with db.session() as s:
        assert rollouts.committed_p95(s, rollout_id=rollout_id, model_version=2, up_to_wave=0) == {first[0]: 5.0}
        tallies = rollouts.wave_tallies(s, rollout_id=rollout_id)
        assert (dict(tallies[0]), dict(tallies[1])) == ({"committed": 1, "assigned": 1}, {"pending": 2})
        doc = rollouts.rollout_public(s, rollouts.get_rollout(s, rollout_id=rollout_id), with_devices=False)
        assert [(w["devices"], w["committed"], w["in_flight"], w["state"]) for w in doc["waves"]] == [
            (2, 1, 1, "active"), (2, 0, 0, "pending")]
        assert "devices" not in doc and doc["conflicts"] == []


def test_wave_counts() -> None:
    assert rollouts.wave_counts([1, 10, 50, 100], 200) == [2, 20, 100, 200]
    assert rollouts.wave_counts([1, 10, 50, 100], 3) == [1, 2, 3]
    assert rollouts.wave_counts({"counts": [1, 5, 50]}, 20) == [1, 5, 20]
    with pytest.raises(Invalid):
        rollouts.wave_counts({"counts": [5, 2]}, 20)


def test_local_store_is_content_addressed_and_limits_size(tmp_path: Path) -> None:
    import hashlib
    import io

    store = LocalStore(tmp_path / "store")
    sha, size = store.put_stream(io.BytesIO(b"hello"), limit=10)
    assert (sha, size) == (hashlib.sha256(b"hello").hexdigest(), 5)
    assert store.exists(sha) and store.size(sha) == 5 and store.path(sha) == tmp_path / "store" / sha[:2] / sha
    with pytest.raises(TooLarge):
        store.put_stream(io.BytesIO(b"x" * 11), limit=10)
    assert list(store.scratch_dir().iterdir()) == []
    assert not store.exists("zz")
