"""Two real server replicas on one PostgreSQL: the same manifest and ETag whichever answers, a new wave
seen by both at once, one leader for the rollout loop replaced when it is killed, and /readyz driving
HAProxy's health checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from edgefleet.server.demo.models import make_classifier
from tests.support.cluster import Cluster, start_cluster
from tests.support.databases import database_url, postgres_reason
from tests.support.haproxy import haproxy_reason
from tests.support.net import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.skipif(postgres_reason() is not None, reason=str(postgres_reason()))]
LEASE_TTL_S = 2.0


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    with database_url("postgresql", tmp_path) as url:
        yield url


def upload(cluster: Cluster, path: Path, via: int = 0) -> dict[str, Any]:
    with path.open("rb") as handle:
        reply = requests.post(f"{cluster.replicas[via].url}/v1/models/cls/versions", headers=cluster.admin(),
                              files={"file": (path.name, handle)}, timeout=60)
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def manifest(url: str, device: str, token: str, etag: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", **({"If-None-Match": etag} if etag else {})}
    return requests.get(f"{url}/v1/devices/{device}/manifest", headers=headers, timeout=10)


def leaders(cluster: Cluster) -> dict[int, list[str]]:
    found = {}
    for index, replica in enumerate(cluster.replicas):
        if replica.proc.poll() is None:
            found[index] = requests.get(replica.url + "/readyz", timeout=5).json()["leads"]
    return found


def test_replicas_sign_the_same_manifest_and_see_a_new_wave_at_once(tmp_path: Path, pg_url: str) -> None:
    cluster = start_cluster(tmp_path, 2, database_url=pg_url, proxy=False, public_url="http://updates.test",
                            overrides={"lease_ttl_s": LEASE_TTL_S})
    try:
        v1, v2 = (upload(cluster, make_classifier(tmp_path / f"v{n}.onnx", n)) for n in (1, 2))
        ids = [f"cam-{i}" for i in range(3)]
        tokens = {d: cluster.replicas[1].enroll(d, tags=["fleet"]) for d in ids}
        a, b = (r.url for r in cluster.replicas)
        baseline = requests.post(f"{a}/v1/rollouts", headers=cluster.admin(), timeout=30, json={
            "model": "cls", "version": 1, "target": {"tags": ["fleet"]}, "waves": [100], "gates": {"soak_s": 0}})
        assert baseline.status_code == 201, baseline.text
        for device in ids:
            first, second = manifest(a, device, tokens[device]), manifest(b, device, tokens[device])
            assert first.status_code == second.status_code == 200
            assert first.headers["ETag"] == second.headers["ETag"] and first.content == second.content
            assert manifest(b, device, tokens[device], first.headers["ETag"]).status_code == 304
            committed = requests.post(f"{b}/v1/devices/{device}/reports", timeout=10, json={
                "state": "committed", "model": "cls", "version": 1, "sha256": v1["sha256"]},
                headers={"Authorization": f"Bearer {tokens[device]}"})
            assert committed.status_code == 204

        rollout = requests.post(f"{b}/v1/rollouts", headers=cluster.admin(), timeout=30, json={
            "model": "cls", "version": 2, "target": {"tags": ["fleet"]}, "waves": {"counts": [1, 3]},
            "gates": {"soak_s": 0, "min_committed_ratio": 1.0, "max_p95_regression": None}}).json()
        canary = next(d["device_id"] for d in rollout["devices"] if d["wave"] == 0)
        rest = [d for d in ids if d != canary]
        offer = manifest(a, canary, tokens[canary]).json()["manifest"]
        assert offer["model"]["version"] == 2 and offer["delta"]["from_sha256"] == v1["sha256"]
        assert manifest(b, canary, tokens[canary]).headers["ETag"] == manifest(a, canary, tokens[canary]).headers[
            "ETag"]
        etags = {d: manifest(a, d, tokens[d]).headers["ETag"] for d in rest}
        requests.post(f"{a}/v1/devices/{canary}/reports", headers={"Authorization": f"Bearer {tokens[canary]}"},
                      json={"state": "committed", "model": "cls", "version": 2, "sha256": v2["sha256"],
                            "rollout_id": rollout["id"]}, timeout=10).raise_for_status()

        # the leader starts wave 2 on its next tick; each replica serves it from the next check-in on
        seen: dict[tuple[str, str], float] = {}

        def both_offer_v2() -> bool:
            for url in (a, b):
                for device in rest:
                    if (url, device) not in seen and manifest(url, device, tokens[device], etags[device]).status_code \
                            == 200:
                        seen[(url, device)] = time.time()
            return len(seen) == 2 * len(rest)

        wait_until(both_offer_v2, timeout=15, interval=0.05)
        started = requests.get(f"{a}/v1/rollouts/{rollout['id']}", headers=cluster.admin(), timeout=10).json()[
            "wave_started_at"]
        lag = max(seen.values()) - started
        assert lag < 2.0, f"a replica saw the new wave {lag:.2f} s after it started"
        for device in rest:
            assert manifest(a, device, tokens[device]).headers["ETag"] == \
                manifest(b, device, tokens[device]).headers["ETag"]
    finally:
        cluster.stop()


def test_one_replica_leads_and_a_killed_leader_is_replaced(tmp_path: Path, pg_url: str) -> None:
    cluster = start_cluster(tmp_path, 2, database_url=pg_url, proxy=False, overrides={"lease_ttl_s": LEASE_TTL_S})
    try:
        wait_until(lambda: sorted(n for loops in leaders(cluster).values() for n in loops) == ["gc", "retention",
                                                                                              "rollouts"], timeout=10)
        held = leaders(cluster)
        leader = next(i for i, loops in held.items() if "rollouts" in loops)
        assert held[leader] == ["gc", "retention", "rollouts"] and held[1 - leader] == []
        killed = time.monotonic()
        cluster.kill(leader)
        wait_until(lambda: leaders(cluster).get(1 - leader) == ["gc", "retention", "rollouts"], timeout=10,
                   interval=0.1)
        took = time.monotonic() - killed
        assert took < LEASE_TTL_S + 2.0, f"the dead leader was replaced after {took:.1f} s"
        cluster.restart(leader)
        time.sleep(LEASE_TTL_S)
        assert leaders(cluster) == {leader: [], 1 - leader: ["gc", "retention", "rollouts"]}  # no flapping back
    finally:
        cluster.stop()


@pytest.mark.skipif(haproxy_reason() is not None, reason=str(haproxy_reason()))
def test_readyz_takes_a_replica_out_of_haproxy_until_its_schema_is_at_head(tmp_path: Path, pg_url: str) -> None:
    cluster = start_cluster(tmp_path, 2, database_url=pg_url)
    schema = pg_url.rsplit("%3D", 1)[1]
    try:
        ready = requests.get(cluster.replicas[0].url + "/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["schema"] == "0011"
        assert requests.get(cluster.url + "/healthz", timeout=5).status_code == 200
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f"UPDATE {schema}.alembic_version SET version_num = '0001'")
        behind = requests.get(cluster.replicas[1].url + "/readyz", timeout=5)
        assert behind.status_code == 503 and behind.json()["reason"] == "schema at 0001, this server needs 0011"
        cluster.wait_proxy_sees({"replica-0": "DOWN", "replica-1": "DOWN"}, timeout=10)
        assert requests.get(cluster.url + "/healthz", timeout=5).status_code == 503  # HAProxy: no server
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as conn:
            conn.execute(f"UPDATE {schema}.alembic_version SET version_num = '0011'")
        cluster.wait_proxy_sees({"replica-0": "UP", "replica-1": "UP"}, timeout=10)
        cluster.kill(0)  # a dead replica: checks fail, and requests in the meantime go to the other one
        assert all(requests.get(cluster.url + "/healthz", timeout=5).status_code == 200 for _ in range(10))
        cluster.wait_proxy_sees({"replica-0": "DOWN", "replica-1": "UP"}, timeout=10)
    finally:
        cluster.stop()
