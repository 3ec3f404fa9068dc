"""Rollouts driven over HTTP: waves, gates, pause on breach, revert, priority conflicts."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import requests

from tests.support.net import wait_until
from tests.support.server import RunningServer


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def push(server: RunningServer, name: str, path: Path) -> dict[str, Any]:
    response = requests.post(f"{server.url}/v1/models/{name}/versions", headers=server.admin(), timeout=30,
                             files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 201, response.text
    return dict(response.json())


def rollout(server: RunningServer, rollout_id: int) -> dict[str, Any]:
    return dict(requests.get(f"{server.url}/v1/rollouts/{rollout_id}", headers=server.admin(), timeout=5).json())


def desired(server: RunningServer, device: str, token: str) -> dict[str, Any] | None:
    response = requests.get(f"{server.url}/v1/devices/{device}/manifest", headers=bearer(token), timeout=5)
    return None if response.status_code == 204 else dict(response.json()["manifest"])


def report(server: RunningServer, device: str, token: str, state: str, name: str, version: int,
           rollout_id: int | None = None) -> None:
    response = requests.post(f"{server.url}/v1/devices/{device}/reports", headers=bearer(token), timeout=5,
                             json={"state": state, "model": name, "version": version, "rollout_id": rollout_id})
    assert response.status_code == 204, response.text


def test_waves_advance_on_commits_then_pause_on_failures(server: RunningServer,
                                                         onnx_files: tuple[Path, Path]) -> None:
    tokens = {f"w-{i}": server.enroll(f"w-{i}", tags=["waves"]) for i in range(10)}
    push(server, "waves", onnx_files[0])
    created = requests.post(server.url + "/v1/rollouts", headers=server.admin(), timeout=10, json={
        "model": "waves", "version": 1, "target": {"tags": ["waves"]}, "waves": [10, 50, 100],
        "gates": {"min_committed_ratio": 1.0, "max_failure_ratio": 0.2, "soak_s": 0.3}})
    assert created.status_code == 201
    doc = created.json()
    rid = doc["id"]
    assert [w["size"] for w in doc["waves"]] == [1, 5, 10]
    first = [d["device_id"] for d in doc["devices"] if d["state"] == "assigned"]
    assert len(first) == 1
    # only the first wave's device has a desired state
    assert [d for d in tokens if desired(server, d, tokens[d]) is not None] == first
    report(server, first[0], tokens[first[0]], "downloading", "waves", 1, rid)
    assert rollout(server, rid)["devices"][0]["state"] == "downloading"
    report(server, first[0], tokens[first[0]], "committed", "waves", 1, rid)
    wait_until(lambda: rollout(server, rid)["current_wave"] == 1, timeout=10)
    second = [d["device_id"] for d in rollout(server, rid)["devices"] if d["state"] == "assigned"]
    assert len(second) == 4
    for device in second[:2]:
        report(server, device, tokens[device], "committed", "waves", 1, rid)
    for device in second[2:]:  # 2 of the 5 devices so far fail: 0.4 > 0.2
        report(server, device, tokens[device], "rolled_back", "waves", 1, rid)
    paused = wait_until(lambda: (r := rollout(server, rid))["state"] == "paused" and r, timeout=10)
    assert isinstance(paused, dict)
    assert paused["reason"] == "wave 2: failure ratio 2/5 = 0.40 above 0.20"
    assert paused["waves"][1] == {"index": 1, "size": 5, "devices": 4, "committed": 2, "failed": 2, "in_flight": 0,
                                  "superseded": 0, "state": "paused"}
    # manual control: resume re-evaluates and pauses again; abort with revert clears the desired state
    resumed = requests.post(f"{server.url}/v1/rollouts/{rid}/resume", headers=server.admin(), timeout=5).json()
    assert resumed["state"] == "running"
    wait_until(lambda: rollout(server, rid)["state"] == "paused", timeout=10)
    aborted = requests.post(f"{server.url}/v1/rollouts/{rid}/abort", headers=server.admin(), json={"revert": True},
                            timeout=5).json()
    assert aborted["state"] == "aborted"
    assert desired(server, first[0], tokens[first[0]]) is None  # it had no earlier model to go back to
    assert requests.post(f"{server.url}/v1/rollouts/{rid}/pause", headers=server.admin(),
                         timeout=5).status_code == 409


def test_auto_revert_sends_devices_back_with_a_revert_manifest(server: RunningServer,
                                                               onnx_files: tuple[Path, Path]) -> None:
    tokens = {d: server.enroll(d) for d in ("rv-1", "rv-2")}
    v1 = push(server, "revert", onnx_files[0])
    v2 = push(server, "revert", onnx_files[1])
    base = requests.post(server.url + "/v1/rollouts", headers=server.admin(), timeout=10, json={
        "model": "revert", "version": 1, "target": {"device_ids": list(tokens)}, "waves": [100],
        "gates": {"soak_s": 0}}).json()
    for device, token in tokens.items():
        report(server, device, token, "committed", "revert", 1, base["id"])
    wait_until(lambda: rollout(server, base["id"])["state"] == "completed", timeout=10)
    bad = requests.post(server.url + "/v1/rollouts", headers=server.admin(), timeout=10, json={
        "model": "revert", "version": 2, "target": {"device_ids": list(tokens)}, "waves": [100],
        "gates": {"max_failure_ratio": 0.0, "soak_s": 0}, "auto_revert": True}).json()
    assert desired(server, "rv-1", tokens["rv-1"])["artifact"]["sha256"] == v2["sha256"]  # type: ignore[index]
    report(server, "rv-1", tokens["rv-1"], "committed", "revert", 2, bad["id"])
    report(server, "rv-2", tokens["rv-2"], "rolled_back", "revert", 2, bad["id"])
    done = wait_until(lambda: (r := rollout(server, bad["id"]))["state"] == "aborted" and r, timeout=10)
    assert isinstance(done, dict) and done["reason"] == "wave 1: failure ratio 1/2 = 0.50 above 0.00"
    for device, token in tokens.items():
        manifest = desired(server, device, token)
        assert manifest is not None and manifest["revert"] is True and manifest["rollout_id"] == bad["id"]
        assert (manifest["model"]["version"], manifest["artifact"]["sha256"]) == (1, v1["sha256"])


def test_priority_conflict_is_resolved_and_visible(server: RunningServer, onnx_files: tuple[Path, Path]) -> None:
    token = server.enroll("prio-1", tags=["prio"])
    push(server, "prio", onnx_files[0])
    push(server, "prio", onnx_files[1])
    body = {"model": "prio", "target": {"tags": ["prio"]}, "waves": [100], "gates": {"soak_s": 3600}}
    high = requests.post(server.url + "/v1/rollouts", headers=server.admin(), timeout=10,
                         json={**body, "version": 1, "priority": 5}).json()
    low = requests.post(server.url + "/v1/rollouts", headers=server.admin(), timeout=10,
                        json={**body, "version": 2, "priority": 1}).json()
    assert low["devices"][0]["state"] == "superseded"
    assert low["conflicts"] == [{"device_id": "prio-1", "reason": f"rollout {high['id']} (priority 5) wins"}]
    assert desired(server, "prio-1", token)["rollout_id"] == high["id"]  # type: ignore[index]
    higher = requests.post(server.url + "/v1/rollouts", headers=server.admin(), timeout=10,
                           json={**body, "version": 2, "priority": 9}).json()
    assert higher["devices"][0]["state"] == "assigned"
    assert rollout(server, high["id"])["conflicts"] == [
        {"device_id": "prio-1", "reason": f"rollout {higher['id']} (priority 9) wins"}]
    assert desired(server, "prio-1", token)["rollout_id"] == higher["id"]  # type: ignore[index]


def test_rollout_prepares_deltas_so_later_waves_get_them(server: RunningServer,
                                                         onnx_files: tuple[Path, Path]) -> None:
    tokens = {f"dl-{i}": server.enroll(f"dl-{i}", tags=["deltas"]) for i in range(2)}
    v1 = push(server, "deltas", onnx_files[0])
    v2 = push(server, "deltas", onnx_files[1])
    for device, token in tokens.items():  # both run v1 already
        requests.post(f"{server.url}/v1/devices/{device}/reports", headers=bearer(token), timeout=5, json={
            "state": "committed", "model": "deltas", "version": 1, "sha256": v1["sha256"]}).raise_for_status()
    created = requests.post(server.url + "/v1/rollouts", headers=server.admin(), timeout=10, json={
        "model": "deltas", "version": 2, "target": {"tags": ["deltas"]}, "waves": {"counts": [1, 2]},
        "gates": {"min_committed_ratio": 1.0, "soak_s": 0}}).json()
    second = next(d["device_id"] for d in created["devices"] if d["wave"] == 1)
    first = next(d["device_id"] for d in created["devices"] if d["wave"] == 0)
    # the patch v1 → v2 is made when the rollout starts, before any device asks for it
    def delta_rows() -> set[tuple[str, str, str]]:
        with sqlite3.connect(server.workdir / "edgefleet.db") as db:
            return set(db.execute("SELECT from_sha256, to_sha256, algorithm FROM deltas WHERE to_sha256 = ?",
                                  (v2["sha256"],)).fetchall())

    assert wait_until(lambda: delta_rows() == {(v1["sha256"], v2["sha256"], "bsdiff4"),
                                               (v1["sha256"], v2["sha256"], "tensor")}, timeout=20)
    report(server, first, tokens[first], "committed", "deltas", 2, created["id"])
    wait_until(lambda: rollout(server, created["id"])["current_wave"] == 1, timeout=10)
    manifest = desired(server, second, tokens[second])
    assert manifest is not None
    assert manifest["delta"]["from_sha256"] == v1["sha256"]
    assert manifest["artifact"]["sha256"] == v2["sha256"]


def test_devices_enrolled_after_a_rollout_starts_join_it(server: RunningServer,
                                                         onnx_files: tuple[Path, Path]) -> None:
    tokens = {f"late-{i}": server.enroll(f"late-{i}", tags=["late"]) for i in range(2)}
    push(server, "late", onnx_files[0])
    created = requests.post(server.url + "/v1/rollouts", headers=server.admin(), timeout=10, json={
        "model": "late", "version": 1, "target": {"tags": ["late"]}, "waves": [50, 100],
        "gates": {"min_committed_ratio": 1.0, "soak_s": 0.0}}).json()
    rid = created["id"]
    # wave 1 of 2 is running: a newcomer waits in the last wave
    tokens["late-new"] = server.enroll("late-new", tags=["late", "lab"])
    outsider = server.enroll("late-other", tags=["elsewhere"])
    doc = rollout(server, rid)
    assert {"device_id": "late-new", "wave": 1, "state": "pending"} in [
        {k: d[k] for k in ("device_id", "wave", "state")} for d in doc["devices"]]
    assert desired(server, "late-new", tokens["late-new"]) is None
    assert desired(server, "late-other", outsider) is None

    def commit_assigned() -> None:
        for row in rollout(server, rid)["devices"]:
            if row["state"] == "assigned":
                report(server, row["device_id"], tokens[row["device_id"]], "committed", "late", 1, rid)

    commit_assigned()
    wait_until(lambda: rollout(server, rid)["current_wave"] == 1, timeout=10)
    manifest = desired(server, "late-new", tokens["late-new"])
    assert manifest is not None and manifest["model"]["version"] == 1 and manifest["rollout_id"] == rid
    commit_assigned()
    wait_until(lambda: rollout(server, rid)["state"] == "completed", timeout=10)
    assert rollout(server, rid)["waves"][1]["devices"] == 2
    # after the rollout completed: a newcomer is given its version at once
    late = server.enroll("late-after", tags=["late"])
    manifest = desired(server, "late-after", late)
    assert manifest is not None and manifest["model"]["name"] == "late" and manifest["rollout_id"] == rid
    assert [d["state"] for d in rollout(server, rid)["devices"] if d["device_id"] == "late-after"] == ["assigned"]
    assert desired(server, "late-other", outsider) is None
    # enrolling again (a reflashed device, after the operator's reset) keeps its desired state and joins
    # nothing twice
    reset = requests.post(f"{server.url}/v1/devices/late-after/reset", headers=server.admin(), timeout=5)
    assert reset.status_code == 200 and reset.json()["enrollment"] == "unenrolled"
    again = server.enroll("late-after", tags=["late"])
    assert desired(server, "late-after", again) == manifest
    assert len([d for d in rollout(server, rid)["devices"] if d["device_id"] == "late-after"]) == 1
