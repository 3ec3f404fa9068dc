"""The fleet simulator, small: real server, real Mosquitto, 20 virtual devices for a few seconds."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks._fleet.stack import Operator
from benchmarks.fleet_sim import Options, main, run_sim
from edgefleet.server.demo.broker import find_mosquitto

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="Mosquitto is not installed")

# the p95 gate still judges every wave, after a 1 s warm-up instead of the server's 10 s (4 waves: 36 s less);
# max_seconds bounds a hung run (server start-up included: a minute on a busy machine), it times nothing
FAST = dict(poll_s=1.0, telemetry_s=1.0, trial_s=0.2, soak_s=0.5, steady_s=2.0, max_seconds=240.0, quiet=True,
            latency_warmup_s=1.0)


def test_twenty_devices_enroll_report_and_take_a_gated_rollout() -> None:
    seen: dict[str, Any] = {}

    def inspect(operator: Operator, device_ids: list[str]) -> None:
        for device_id in device_ids:
            rows = operator.telemetry(device_id)
            seqs = [r["seq"] for r in rows]
            assert len(rows) >= 3 and seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert rows[0]["model_version"] == 1
            events = [e["type"] for e in operator.events(device_id)]
            assert events[-4:] == ["update.downloading", "update.verified", "update.installed", "update.committed"]
            device = operator.device(device_id)
            assert (device["model_version"], device["online"], device["update_state"]) == (2, True, "committed")
        seen["devices"] = len(device_ids)

    result = run_sim(Options(devices=20, **FAST), inspect=inspect)  # type: ignore[arg-type]

    assert seen["devices"] == 20
    assert result["broker"] == "mosquitto" and result["mqtt"] == "5"
    assert result["device_totals"]["enrolled"] == 20 and result["workers_reported"] == 1
    assert result["errors"] == {}, result["error_samples"]
    steady = result["checkin_steady"]
    assert steady["count"] >= 20 and steady["share_304"] >= 0.8 and 0 < steady["p99_ms"] < 1000
    assert result["telemetry"]["stored_rows"] >= 20 * 3 and result["telemetry"]["stored_per_s"] > 10
    rollout = result["rollout"]
    assert rollout["state"] == "completed" and rollout["devices_on_v2"] == 20
    assert [w["devices"] for w in rollout["waves"]] == [1, 1, 8, 10]  # 1/10/50/100 % of 20, at least one each
    assert all(w["committed"] == w["devices"] for w in rollout["waves"])
    assert rollout["all_committed_s"] > 0  # how fast is benchmarks' business (a busy machine took 78 s)
    assert result["outcomes"] == {"committed": 20, "rolled_back": 0, "rejected": 0}
    assert result["device_totals"]["downloads"] == 20 and result["device_totals"]["reports_sent"] == 80


def test_failing_canary_pauses_the_rollout_at_the_first_gate() -> None:
    result = run_sim(Options(devices=10, fail_fraction=1.0, **FAST))  # type: ignore[arg-type]
    rollout = result["rollout"]
    assert rollout["state"] == "paused"
    assert "failure ratio 1/1" in rollout["reason"]
    assert rollout["devices_on_v2"] == 0 and rollout["rolled_back"] == 1
    assert [(w["devices"], w["committed"], w["failed"]) for w in rollout["waves"]] == [(1, 0, 1), (4, 0, 0), (5, 0, 0)]


def test_with_push_a_ten_minute_poll_still_rolls_out_in_seconds() -> None:
    options = {**FAST, "poll_s": 600.0, "push": True, "push_spread_s": 0.5}
    result = run_sim(Options(devices=10, **options))  # type: ignore[arg-type]
    rollout = result["rollout"]
    # devices first poll somewhere in 0..600 s and then every ~600 s: only the pushes bring them in
    assert rollout["state"] == "completed" and rollout["devices_on_v2"] == 10, rollout
    assert result["all_on_target_s"] == rollout["all_on_target_s"] is not None
    assert result["push"]["received_during_rollout"] >= 10 and result["push"]["server_sent"] >= 10
    assert result["push"]["server_failed"] == 0 and result["errors"] == {}, result["error_samples"]


def test_bad_arguments_are_refused_with_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--waves", "one,two"])
    assert exit_info.value.code == 2
    assert "--waves must be numbers" in capsys.readouterr().err
