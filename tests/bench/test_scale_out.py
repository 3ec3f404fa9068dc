"""The scale-out proof, small: 50 virtual devices through HAProxy to 2 replicas on PostgreSQL, artifacts on
SeaweedFS, telemetry through Mosquitto's shared subscription; the replica leading the rollout is SIGKILLed
mid-rollout and restarted. Nothing may be lost or stored twice, and every device ends on the target."""

from __future__ import annotations

import pytest

from benchmarks.fleet_sim import Options, run_sim
from edgefleet.server.demo.broker import find_mosquitto
from tests.support.databases import postgres_reason
from tests.support.haproxy import haproxy_reason
from tests.support.s3 import weed_reason

MISSING = [reason for reason in (postgres_reason(), haproxy_reason(), weed_reason(),
                                 None if find_mosquitto() else "Mosquitto is not installed") if reason]
pytestmark = [pytest.mark.postgres, pytest.mark.skipif(bool(MISSING), reason="; ".join(MISSING))]
LEASE_TTL_S = 2.0


def test_a_replica_killed_mid_rollout_loses_nothing() -> None:
    result = run_sim(Options(
        devices=50, replicas=2, database="postgresql", storage="s3", kill_replica_at=3.0, restart_after_s=3.0,
        lease_ttl_s=LEASE_TTL_S, poll_s=1.0, telemetry_s=1.0, trial_s=0.5, soak_s=1.0, steady_s=2.0,
        waves=[10.0, 50.0, 100.0], latency_warmup_s=1.0, max_seconds=150.0, quiet=True))

    rollout = result["rollout"]
    assert rollout["state"] == "completed", rollout
    kill = result["kill"]
    assert kill["was_leader"] and "restart_failed" not in kill and "restarted_s" in kill, kill
    assert kill["killed_s"] < rollout["all_committed_s"], "the replica was killed after the rollout was done"
    assert kill["leader_replaced_after_s"] < LEASE_TTL_S + 3.0, kill
    assert result["replicas"] == 2 and result["devices"] == 50
    assert result["devices_on_target"] == 50 and rollout["devices_on_v2"] == 50
    assert result["reports_lost"] == 0, result["reports"]
    assert result["telemetry_lost"] == 0 and result["telemetry_duplicated"] == 0, result["telemetry"]
    assert result["events_lost"] == 0, result["events"]
    assert result["telemetry"]["acked_by_broker"] >= 50 * 5
    assert result["server_errors"]["count"] == 0, result["server_errors"]["samples"]
    assert result["checkin_p99_on_connection_ms"] is not None
