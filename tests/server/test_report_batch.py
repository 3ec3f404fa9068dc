"""server/reports.py: a batch of update reports is applied from a few look-ups, not three queries a report."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from edgefleet.agent.wire import UpdateReport
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import registry, rollouts
from edgefleet.server.db import Database
from edgefleet.server.reports import ReportWriter, _Pending
from tests.support.databases import migrated_database

DEVICES = 60


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with migrated_database("sqlite", tmp_path) as database:
        yield database


def fleet_in_a_rollout(db: Database) -> tuple[dict[str, str], int]:
    with db.session() as s:
        tokens = {f"rb{i:02d}": device_crud.enroll_device(s, device_id=f"rb{i:02d}", device_class="rpi4",
                                                          tags=["rb"], hw={}) for i in range(DEVICES)}
        registry.create_version(s, name="rb", sha256="a" * 64, size=10, fmt="onnx", task="other", inputs=[],
                                outputs=[], labels=None, preprocess=None, runtime_hints=None, calibration_sha256=None)
    with db.session() as s:
        _, version = registry.get_version(s, name="rb", version=1)
        rollout = rollouts.create_rollout(s, version_id=version.id, target={"tags": ["rb"]}, waves=[100],
                                          gates={}, priority=0, trial=None, shadow=None, auto_revert=False,
                                          push=False, now=1.0)
        rollouts.start_wave(s, rollout=rollout, wave=0, now=1.0)
        return tokens, rollout.id


def test_a_batch_of_reports_costs_a_few_queries_and_each_lands(db: Database) -> None:
    tokens, rollout_id = fleet_in_a_rollout(db)
    batch = [_Pending(device_id, token, UpdateReport(state="committed" if i % 2 else "trial", model="rb", version=1,
                                                     rollout_id=rollout_id))
             for i, (device_id, token) in enumerate(tokens.items())]
    batch.append(_Pending("rb00", "not-its-token", UpdateReport(state="failed", model="rb", version=1)))
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split()[0].upper())

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        ReportWriter(db)._write(batch)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)

    assert [item.done.result() is None for item in batch] == [True] * DEVICES + [False]  # the stranger refused
    # devices, rollout, version, model and rollout rows once, the refusal's two look-ups (was five a report)
    assert statements.count("SELECT") <= 8, statements
    assert len(statements) - statements.count("SELECT") <= 2 * DEVICES  # the device's and its rollout row's UPDATE
    with db.session() as s:
        states = {row.device_id: row.state for row in rollouts.rollout_devices(s, rollout_id=rollout_id)}
        updated = {d.id: d.update_state for d in s.scalars(device_crud.select(device_crud.Device))}
    assert states == {device_id: "committed" if i % 2 else "trial" for i, device_id in enumerate(tokens)}
    assert updated["rb00"] == "trial" and updated["rb01"] == "committed"
