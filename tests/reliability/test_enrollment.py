"""Who may hold a device id (issue 14), with real agents (``edgefleet-agent run``), the real server, Mosquitto
and the operator's CLI: a takeover attempt with the shared token is refused while the real device keeps
working; a reset spool (new epoch, seq from 1, sessions from 1) is stored and applied again; a re-imaged box
is refused until the operator resets the id, then enrolls by itself; ``enrollment.mode: approve`` holds new
devices (nothing of theirs stored) until the operator approves them, a refused device keeps serving and
asks once per poll interval; a one-time token enrolls one id once without approval."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.reliability.support import DaemonAgent, Versions, agent_yaml, api_port, assert_exact_outputs
from tests.support.broker import Mosquitto
from tests.support.net import wait_until
from tests.support.server import RunningServer, start_server

CLI = Path(sys.executable).with_name("edgefleet")


def cli(server: RunningServer, *args: str) -> Any:
    done = subprocess.run([str(CLI), "--server", server.url, "--token", server.admin_token, "--json", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def device(server: RunningServer, device_id: str) -> dict[str, Any]:
    return dict(requests.get(f"{server.url}/v1/devices/{device_id}", headers=server.admin(), timeout=5).json())


def telemetry(server: RunningServer, device_id: str) -> dict[str, Any]:
    return dict(requests.get(f"{server.url}/v1/devices/{device_id}/telemetry", params={"limit": 10_000},
                             headers=server.admin(), timeout=5).json())


def start_agent(tmp: Path, name: str, srv: RunningServer, broker: Mosquitto, *,
                server: dict[str, Any] | None = None) -> DaemonAgent:
    """A real agent of ``srv``; ``server`` changes its ``server:`` section (poll interval, enrollment token)."""
    config = agent_yaml(tmp / name / "state", name, server=srv, mqtt_port=broker.port, api_port=api_port(),
                        telemetry={"interval_s": 0.3})
    config["server"].update(server or {})
    return DaemonAgent(tmp / name, config).start()


def serve_version(versions: Versions, agent: DaemonAgent, seed: int) -> None:
    entry = versions.push(seed=seed)
    versions.roll_out(entry["version"], [agent.config["device_id"]])
    wait_until(lambda: agent.update_state() == "committed" and agent.wait_serving()["model"]["sha256"]
               == entry["sha256"], timeout=90, interval=0.2)
    assert_exact_outputs(agent.wait_serving(), seed=seed)


def lines(agent: DaemonAgent, text: str) -> int:
    return agent.log().count(text)


def test_a_takeover_with_the_shared_token_is_refused_and_the_real_device_keeps_working(
        server: RunningServer, broker: Mosquitto, tmp_path: Path) -> None:
    versions = Versions(server, tmp_path / "models", "takeover")
    with start_agent(tmp_path, "real-01", server, broker) as agent:
        agent.wait_enrolled()
        serve_version(versions, agent, seed=0)
        token = (agent.state_dir / "device-token").read_text()
        before = device(server, "real-01")
        attempts = [requests.post(f"{server.url}/v1/enroll", timeout=5, headers=headers, json={
            "device_id": "real-01", "enrollment_token": server.enrollment_token, "device_class": "evil",
            "tags": ["evil"], "hw": {"runtimes": ["onnxruntime"]}}) for headers in (
            {}, {"Authorization": "Bearer not-its-token"}, {"Authorization": f"Bearer {server.admin_token}"})]
        assert [a.status_code for a in attempts] == [409, 409, 409], [a.text for a in attempts]
        assert "edgefleet devices reset real-01" in attempts[0].json()["detail"]
        after = device(server, "real-01")
        assert (after["device_class"], after["tags"], after["hw"]) == (before["device_class"], before["tags"],
                                                                       before["hw"])
        # the real device noticed nothing: same token, and it takes the next update
        serve_version(versions, agent, seed=1)
        assert (agent.state_dir / "device-token").read_text() == token
        assert "enrolling again" not in agent.log()
    print("takeover: 3 enrollments of an enrolled id with the shared token refused (409), the real device "
          "kept its token and committed the next version")


def test_a_reset_spool_is_stored_again_in_a_new_epoch(server: RunningServer, broker: Mosquitto,
                                                      tmp_path: Path) -> None:
    name = "respool-01"
    agent = start_agent(tmp_path, name, server, broker)
    with agent:
        agent.wait_enrolled()
        wait_until(lambda: len(telemetry(server, name)["telemetry"]) >= 6, timeout=30)
        agent.stop()
        agent.start()  # a plain restart: same epoch, session 2
        wait_until(lambda: device(server, name)["session"] == 2 and device(server, name)["online"], timeout=30)
        agent.stop()
        first = telemetry(server, name)
        (old,) = first["epochs"]
        assert old["first_seq"] == 1 and old["missing"] == 0
        spool = agent.state_dir / "telemetry-spool.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(spool) + suffix).unlink(missing_ok=True)
        spool.write_bytes(b"a corrupt spool " * 200)  # the agent moves it aside and starts a new one
        agent.start()
        wait_until(lambda: len(telemetry(server, name)["epochs"]) == 2
                   and telemetry(server, name)["epochs"][0]["messages"] >= 5, timeout=30)
        doc = wait_until(lambda: (d := device(server, name))["session"] == 1 and d["online"] and d, timeout=30)
    assert isinstance(doc, dict)
    after = telemetry(server, name)
    new, kept = after["epochs"]
    assert new["epoch"] != old["epoch"] and new["first_seq"] == 1 and new["missing"] == 0
    assert kept == {**old, "messages": kept["messages"], "last_seq": kept["last_seq"],
                    "last_received": kept["last_received"]}
    assert kept["messages"] >= old["messages"] and kept["first_seq"] == 1
    assert doc["epoch"] == new["epoch"]  # the birth of session 1 in the new epoch was applied over session 2
    stored = {(r["epoch"], r["seq"]) for r in after["telemetry"]}
    assert {(new["epoch"], s) for s in range(1, new["last_seq"] + 1)} <= stored
    print(f"reset spool: epoch {old['epoch']} kept {kept['messages']} messages, the new epoch {new['epoch']} "
          f"stored {new['messages']} from seq 1, none missing; the birth of session 1 replaced session 2")


def test_a_reimaged_box_is_refused_until_the_operator_resets_the_id(server: RunningServer, broker: Mosquitto,
                                                                    tmp_path: Path) -> None:
    name = "reimage-01"
    versions = Versions(server, tmp_path / "models", "reimage")
    agent = start_agent(tmp_path, name, server, broker, server={"poll_interval_s": 1.0})
    with agent:
        agent.wait_enrolled()
        serve_version(versions, agent, seed=2)
        first_epoch = device(server, name)["epoch"]
        agent.stop()
        shutil.rmtree(agent.state_dir)  # a re-imaged (or replacement) box: no token, no spool, no model
        agent.start()
        wait_until(lambda: "already enrolled" in agent.log(), timeout=30)
        waited = time.monotonic()
        time.sleep(4.0)
        refusals = lines(agent, "already enrolled")
        assert refusals <= (time.monotonic() - waited) / 0.8 + 2, refusals  # once per poll, not a loop
        assert not (agent.state_dir / "device-token").exists()
        assert cli(server, "devices", "reset", name)["enrollment"] == "unenrolled"
        agent.wait_enrolled()
        # its desired state survived: it fetches and serves the same version again, in a new epoch
        wait_until(lambda: agent.update_state() == "committed", timeout=90)
        assert_exact_outputs(agent.wait_serving(), seed=2)
        wait_until(lambda: device(server, name)["epoch"] not in (0, first_epoch)
                   and telemetry(server, name)["epochs"][0]["first_seq"] == 1, timeout=30)
    print(f"re-imaged box: refused {refusals} times in 4 s (poll 1 s) until `edgefleet devices reset`, then "
          f"enrolled, served its version again and reported in a new epoch")


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[tuple[RunningServer, Mosquitto]]:
    """A server in ``enrollment.mode: approve`` with a broker of its own (two servers on one broker would share
    the ``$share/edgefleet`` stream as if they were replicas of one fleet)."""
    (tmp_path / "strict-broker").mkdir()
    broker = Mosquitto(tmp_path / "strict-broker").start()
    running = start_server(tmp_path / "strict", mqtt_port=broker.port,
                           overrides={"enrollment": {"mode": "approve"}, "telemetry": {"batch_interval_s": 0.1}})
    try:
        yield running, broker
    finally:
        running.stop()
        broker.stop()


def dashboard_post(server: RunningServer, path: str, *, csrf: bool = True) -> requests.Response:
    """The dashboard's form as a browser sends it: session cookie, and the page's csrf field."""
    browser = requests.Session()
    signed = browser.post(server.url + "/login", data={"token": server.admin_token, "next": "/"}, timeout=5,
                          allow_redirects=False)
    assert signed.status_code == 303
    page = browser.get(server.url + path.rsplit("/", 1)[0], timeout=10).text
    field = page.split('name="csrf" value="', 1)[1].split('"', 1)[0] if csrf else "forged"
    return browser.post(server.url + path, data={"csrf": field}, timeout=10, allow_redirects=False)


def test_approve_mode_holds_new_devices_until_the_operator_lets_them_in(strict: tuple[RunningServer, Mosquitto],
                                                                         tmp_path: Path) -> None:
    server, broker = strict
    name = "appr-01"
    versions = Versions(server, tmp_path / "models", "approve")
    agent = start_agent(tmp_path, name, server, broker, server={"poll_interval_s": 1.0})
    with agent:
        agent.wait_enrolled()  # a token, not yet valid
        wait_until(lambda: "waiting for the operator's approval" in agent.log(), timeout=20)
        assert [d["device_id"] for d in cli(server, "devices", "pending")["devices"]] == [name]
        time.sleep(3.0)
        assert telemetry(server, name)["telemetry"] == []  # pending: nothing it sends is stored
        assert device(server, name)["enrollment"] == "pending"
        refused = requests.post(f"{server.url}/devices/{name}/approve", timeout=5,
                                data={"csrf": "x"}, allow_redirects=False)
        assert refused.status_code == 403  # no session: the dashboard form is refused
        assert dashboard_post(server, f"/devices/{name}/approve", csrf=False).status_code == 403
        assert device(server, name)["enrollment"] == "pending"
        assert cli(server, "devices", "approve", name)["enrollment"] == "enrolled"
        serve_version(versions, agent, seed=3)
        wait_until(lambda: len(telemetry(server, name)["telemetry"]) >= 3, timeout=30)
        # what it measured while waiting was spooled, not sent into the void: delivered from seq 1
        (spooled,) = telemetry(server, name)["epochs"]
        assert spooled["first_seq"] == 1 and spooled["missing"] == 0
        # the operator resets it from the dashboard: it enrolls again by itself and waits for approval,
        # serving its model all the while and asking once per poll interval
        assert dashboard_post(server, f"/devices/{name}/reset").status_code == 303
        wait_until(lambda: device(server, name)["enrollment"] == "pending", timeout=30)
        waited, before = time.monotonic(), lines(agent, "waiting for the operator's approval")
        for _ in range(20):
            assert_exact_outputs(agent.wait_serving(), seed=3)
            time.sleep(0.2)
        asked = lines(agent, "waiting for the operator's approval") - before
        assert asked <= (time.monotonic() - waited) / 0.8 + 2, asked
        assert dashboard_post(server, f"/devices/{name}/approve").status_code == 303
        wait_until(lambda: device(server, name)["enrollment"] == "enrolled", timeout=10)
        # approved again, it announces itself: its birth (dropped while it was not taken) counts again
        wait_until(lambda: device(server, name)["online"], timeout=20)
        serve_version(versions, agent, seed=4)
    # a one-time token enrolls its id once, without approval; it cannot be used twice
    grant = cli(server, "devices", "enroll-token", "appr-02")
    with start_agent(tmp_path, "appr-02", server, broker, server={"enrollment_token": grant["enrollment_token"]}) \
            as second:
        second.wait_enrolled()
        wait_until(lambda: device(server, "appr-02")["enrollment"] == "enrolled", timeout=10)
        wait_until(lambda: len(telemetry(server, "appr-02")["telemetry"]) >= 2, timeout=30)
    again = requests.post(f"{server.url}/v1/enroll", timeout=5, json={
        "device_id": "appr-02", "enrollment_token": grant["enrollment_token"]})
    assert again.status_code == 401
    print(f"approve mode: {name} pending (0 rows stored) until approved; reset from the dashboard, served "
          f"20 requests with exact outputs while refused ({asked} refusal lines), approved again; a one-time "
          f"token enrolled appr-02 once")
