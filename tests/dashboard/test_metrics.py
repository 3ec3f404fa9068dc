"""/metrics parsed with prometheus_client's own parser; values checked against the seeded fleet."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboard.fleet import Fleet, telemetry
from tests.support.net import wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(fleet: Fleet, token: str = "scrape-me") -> Samples:
    response = requests.get(fleet.server.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_fleet_series(fleet: Fleet) -> None:
    samples = scrape(fleet)
    assert value(samples, "edgefleet_devices", state="online") == 4
    assert value(samples, "edgefleet_devices", state="offline") == 2
    by_version = {(dict(k[1])["version"], dict(k[1])["online"]): v for k, v in samples.items()
                  if k[0] == "edgefleet_devices_by_model_version"}
    assert by_version == {("1", "true"): 2, ("1", "false"): 1, ("2", "true"): 1, ("2", "false"): 0}
    states = {dict(k[1])["state"]: v for k, v in samples.items() if k[0] == "edgefleet_rollout_state"}
    assert states == {"running": 1, "paused": 0, "completed": 0, "aborted": 0}
    assert value(samples, "edgefleet_rollout_state", rollout="1", model="detector", version="2", state="running") == 1
    assert value(samples, "edgefleet_rollout_current_wave", rollout="1") == 0
    assert value(samples, "edgefleet_rollout_devices", rollout="1", state="assigned") == 1
    assert value(samples, "edgefleet_rollout_devices", rollout="1", state="pending") == 1
    assert value(samples, "edgefleet_mqtt_connected") == 1
    build = [dict(k[1]) for k in samples if k[0] == "edgefleet_build_info"]
    assert len(build) == 1 and build[0]["version"] and build[0]["python"].count(".") == 2


def test_checkin_series_count_each_answer(fleet: Fleet) -> None:
    before = scrape(fleet)
    device = fleet.rollout_device("assigned")  # it has a desired state from rollout 1
    url = f"{fleet.server.url}/v1/devices/{device}/manifest"
    token = {"Authorization": f"Bearer {fleet.tokens[device]}"}
    first = requests.get(url, headers=token, timeout=5)
    assert first.status_code == 200
    for _ in range(3):
        again = requests.get(url, headers={**token, "If-None-Match": first.headers["etag"]}, timeout=5)
        assert again.status_code == 304
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    after = scrape(fleet)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("edgefleet_checkin_requests_total", code="200") == 1
    assert delta("edgefleet_checkin_requests_total", code="304") == 3
    assert delta("edgefleet_checkin_requests_total", code="401") == 1
    assert delta("edgefleet_checkin_duration_seconds_count") == 5
    assert delta("edgefleet_checkin_duration_seconds_bucket", le="+Inf") == 5
    assert 0 < delta("edgefleet_checkin_duration_seconds_sum") < 5


def test_ingestion_series_follow_published_messages(fleet: Fleet) -> None:
    before = scrape(fleet)
    for seq in (101, 102, 103):
        fleet.send("cam-05", "telemetry", telemetry(seq, 2000.0 + seq, p50=1.0, p95=2.0, cpu=5.0, version=1))
    fleet.client.publish("edgefleet/v1/devices/cam-05/telemetry", b"{not json", qos=1).wait_for_publish(5)

    def settled() -> Samples | None:
        now = scrape(fleet)
        done = value(now, "edgefleet_ingest_received_total") - value(before, "edgefleet_ingest_received_total") == 4
        return now if done and value(now, "edgefleet_ingest_batch_messages_total") == value(
            now, "edgefleet_ingest_received_total") else None

    after = wait_until(settled, timeout=10, interval=0.1)
    assert isinstance(after, dict)
    assert value(after, "edgefleet_ingest_messages_total", kind="telemetry") - value(
        before, "edgefleet_ingest_messages_total", kind="telemetry") == 3
    assert value(after, "edgefleet_ingest_invalid_total") - value(before, "edgefleet_ingest_invalid_total") == 1
    assert value(after, "edgefleet_ingest_messages_total", kind="status") == fleet.published["status"]
    batches = value(after, "edgefleet_ingest_batches_total")
    assert value(after, "edgefleet_ingest_batch_duration_seconds_count") == batches
    assert value(after, "edgefleet_ingest_batches_total") > value(before, "edgefleet_ingest_batches_total")
    assert value(after, "edgefleet_ingest_queue_depth") == 0


def test_metrics_need_a_token(fleet: Fleet) -> None:
    url = fleet.server.url + "/metrics"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    device = {"Authorization": f"Bearer {fleet.tokens['cam-01']}"}
    assert requests.get(url, headers=device, timeout=5).status_code == 401
    assert requests.get(url, headers=fleet.server.admin(), timeout=5).status_code == 200
