"""``edgefleet`` (the installed console script) as a subprocess against the real server and a real Mosquitto."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests

from edgefleet.server.opcli import SPARK
from tests.dashboard.fleet import birth, connect, telemetry
from tests.support.broker import Mosquitto
from tests.support.models import make_onnx_image_classifier
from tests.support.net import wait_until
from tests.support.server import RunningServer, start_server

EDGEFLEET = Path(sys.executable).with_name("edgefleet")


@dataclass
class Env:
    server: RunningServer
    client: mqtt.Client
    models: list[Path]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("opcli")
    broker = Mosquitto(workdir).start()
    server = start_server(workdir, mqtt_port=broker.port, overrides={
        "telemetry": {"batch_interval_s": 0.05}, "device_classes": {"rpi4": ["cpu-int8-static", "cpu-int8-dynamic"]}})
    client = connect(broker.port)
    models = [make_onnx_image_classifier(workdir / f"cls{i}.onnx", seed=i) for i in (0, 1)]
    try:
        yield Env(server, client, models)
    finally:
        client.loop_stop()
        client.disconnect()
        server.stop()
        broker.stop()


def cli(env: Env, *args: str, token: str | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, EDGEFLEET_URL=env.server.url, EDGEFLEET_ADMIN_TOKEN=token or env.server.admin_token,
                   COLUMNS="200")
    done = subprocess.run([str(EDGEFLEET), *args], capture_output=True, text=True, timeout=120, env=environ)
    assert "Traceback" not in done.stderr, done.stderr
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def cli_json(env: Env, *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)  # the whole stdout is one JSON document


def failure(env: Env, *args: str, token: str | None = None, code: int = 1) -> str:
    """The one-line reason of a command that must fail with exit code ``code`` (its class, docs/operator.md)."""
    done = cli(env, *args, token=token, ok=False)
    assert (done.returncode, done.stdout) == (code, ""), done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("edgefleet: ")
    return done.stderr.strip()


def test_model_push_list_show(env: Env) -> None:
    first = cli(env, "model", "push", "cls", str(env.models[0]), "--task", "classification").stdout
    sha0 = hashlib.sha256(env.models[0].read_bytes()).hexdigest()
    assert first.strip() == f"pushed cls version 1 (onnx, sha256 {sha0[:12]})"
    second = cli_json(env, "model", "push", "cls", str(env.models[1]))
    assert (second["version"], second["format"]) == (2, "onnx")
    assert second["sha256"] == hashlib.sha256(env.models[1].read_bytes()).hexdigest()
    assert [(i["name"], i["dtype"], i["shape"]) for i in second["inputs"]] == [("image", "float32", [None, 3, 32, 32])]
    listed = cli_json(env, "--json", "model", "list")  # --json before or after the sub-command
    assert [(m["name"], m["latest_version"], m["format"]) for m in listed["models"]] == [("cls", 2, "onnx")]
    table = cli(env, "model", "list").stdout
    assert any(line.split("│")[1:4] == [" cls  ", " 2      ", " onnx   "] for line in table.splitlines()), table
    shown = cli(env, "model", "show", "cls").stdout
    assert sha0[:12] in shown and second["sha256"][:12] in shown


def test_optimize_waits_then_lists_variants(env: Env) -> None:
    result = cli_json(env, "model", "optimize", "cls", "1", "--target", "cpu-int8", "--wait")
    assert result["job"]["state"] == "succeeded" and result["job"]["progress"] == 1.0
    variants = {v["name"]: v for v in result["variants"]}
    assert set(variants) == {"reference", "cpu-int8-static", "cpu-int8-dynamic"}
    assert all(v["status"] in ("ready", "rejected") for v in variants.values())
    table = cli(env, "model", "variants", "cls", "1").stdout
    assert "variants of cls v1" in table
    for name, variant in variants.items():
        row = next(line for line in table.splitlines() if f" {name} " in line)
        assert f" {variant['status']} " in row
    failed = failure(env, "model", "optimize", "cls", "--target", "toaster", "--wait")
    assert failed.startswith("edgefleet: job ") and "failed" in failed and "toaster" in failed


def test_rollout_create_status_pause_resume_abort(env: Env) -> None:
    tokens = {f"r{i}": env.server.enroll(f"r{i}", device_class="rpi4") for i in range(1, 5)}
    created = cli_json(env, "rollout", "create", "cls", "2", "--devices", "r1,r2,r3,r4", "--counts", "1,4",
                       "--soak", "3600")
    rollout_id = created["id"]
    assert (created["state"], created["model"], created["version"], created["push"]) == ("running", "cls", 2, True)
    assert [(w["devices"], w["state"]) for w in created["waves"]] == [(1, "active"), (3, "pending")]
    assigned = next(d["device_id"] for d in created["devices"] if d["state"] == "assigned")
    status = cli(env, "rollout", "status", str(rollout_id)).stdout
    assert f"rollout {rollout_id}: cls v2 priority 0 running" in status and "0/4 committed" in status
    report = {"state": "committed", "model": "cls", "version": 2, "rollout_id": rollout_id}
    requests.post(f"{env.server.url}/v1/devices/{assigned}/reports", json=report, timeout=5,
                  headers={"Authorization": f"Bearer {tokens[assigned]}"}).raise_for_status()
    status = cli(env, "rollout", "status", str(rollout_id)).stdout
    assert "1/4 committed" in status and "[" + "█" * 8 + "░" * 22 + "]" in status
    wave_rows = [line for line in status.splitlines() if line.startswith("│ 1 ") or line.startswith("│ 2 ")]
    assert [[c.strip() for c in row.split("│")[1:-1]] for row in wave_rows[:2]] == [
        ["1", "1", "1", "0", "0", "0", "active"], ["2", "3", "0", "0", "0", "0", "pending"]]
    assert "paused" in cli(env, "rollout", "pause", str(rollout_id)).stdout
    assert failure(env, "rollout", "pause", str(rollout_id), code=5) == (
        f"edgefleet: POST /v1/rollouts/{rollout_id}/pause: HTTP 409: rollout {rollout_id} is paused, not running")
    assert cli_json(env, "rollout", "resume", str(rollout_id))["state"] == "running"
    aborted = cli_json(env, "rollout", "abort", str(rollout_id), "--revert")
    assert aborted["state"] == "aborted"
    assert {d["device_id"]: d["state"] for d in aborted["devices"]}[assigned] == "reverted"
    quiet = cli_json(env, "rollout", "create", "cls", "2", "--devices", "r1", "--no-push", "--soak", "3600")
    assert quiet["push"] is False
    cli_json(env, "rollout", "abort", str(quiet["id"]))
    listed = cli_json(env, "rollout", "list")["rollouts"]
    assert [(r["id"], r["state"], r["push"]) for r in listed] == [(rollout_id, "aborted", True),
                                                                 (quiet["id"], "aborted", False)]


def send(env: Env, device: str, leaf: str, document: dict[str, Any], retain: bool = False) -> None:
    env.client.publish(f"edgefleet/v1/devices/{device}/{leaf}", json.dumps(document), qos=1,
                       retain=retain).wait_for_publish(5)


def test_devices_and_telemetry_with_sparkline(env: Env) -> None:
    env.server.enroll("t1", device_class="rpi4")
    send(env, "t1", "status", birth(3, 1), retain=True)
    p95 = [2.0, 4.0, 6.0, 8.0, 6.0, 4.0, 2.0, 9.0]
    for seq, value in enumerate(p95, start=1):
        send(env, "t1", "telemetry", telemetry(seq, 5000.0 + seq, p50=1.0, p95=value, cpu=10.0 * seq, version=1))
    wait_until(lambda: len(cli_json(env, "telemetry", "t1")["telemetry"]) == len(p95), timeout=10, interval=0.2)
    human = cli(env, "telemetry", "t1", "--show", "3").stdout
    expected = "".join(SPARK[int((v - 2.0) / 7.0 * 7.999)] for v in p95)
    assert expected == "▁▃▅▇▅▃▁█"
    assert f"p95 ms {expected}  2 .. 9" in human
    assert f"cpu %  {''.join(SPARK[int(i / 7 * 7.999)] for i in range(8))}  10 .. 80" in human
    assert "last 3 of 8" in human
    devices = cli_json(env, "devices")["devices"]  # `devices` alone lists
    t1 = next(d for d in devices if d["device_id"] == "t1")
    assert (t1["online"], t1["model_name"], t1["model_version"], t1["p95_ms"]) == (True, "detector", 1, 9.0)
    row = next(line for line in cli(env, "devices", "list").stdout.splitlines() if "│ t1 " in line)
    assert [c.strip() for c in row.split("│")[1:9]] == ["t1", "online", "rpi4", "detector", "1", "onnxruntime",
                                                         "CPUExecutionProvider", "9.00"]
    shown = cli(env, "devices", "show", "t1").stdout
    assert "p95 latency: 9.00" in shown and "status: online" in shown and "model: detector v1" in shown


def test_devices_command_reaches_the_device(env: Env) -> None:
    env.server.enroll("c1")
    got: queue.Queue[bytes] = queue.Queue()
    listener = connect(int(env.client._port))  # a second client plays the device
    listener.on_message = lambda _c, _u, m: got.put(bytes(m.payload))
    listener.subscribe("edgefleet/v1/devices/c1/commands", qos=1)
    try:
        wait_until(lambda: listener.is_connected(), timeout=5)
        sent = cli_json(env, "devices", "command", "c1", "check_update", "--arg", "force=true")
        assert (sent["type"], sent["args"]) == ("check_update", {"force": True}) and len(sent["id"]) == 32
        assert json.loads(got.get(timeout=5)) == sent
    finally:
        listener.loop_stop()
        listener.disconnect()


def test_rollout_create_gate_flags(env: Env) -> None:
    env.server.enroll("g1", device_class="rpi4")
    created = cli_json(env, "rollout", "create", "cls", "2", "--devices", "g1", "--gate-alpha", "0.05",
                       "--gate-min-devices", "5", "--gate-min-samples", "4", "--gate-warmup", "20")
    gates = created["gates"]
    assert (gates["latency_alpha"], gates["latency_min_devices"], gates["latency_min_samples"],
            gates["latency_warmup_s"]) == (0.05, 5, 4, 20.0)
    assert gates["latency_baseline_s"] == 300.0  # the server's default where no flag is given
    cli_json(env, "rollout", "abort", str(created["id"]))
    refused = failure(env, "rollout", "create", "cls", "2", "--devices", "g1", "--gate-alpha", "0.9", code=6)
    assert refused.startswith("edgefleet: POST /v1/rollouts: HTTP 422: ") and "latency_alpha" in refused
    assert "\n" not in refused.strip()


def test_errors_are_one_line(env: Env, tmp_path: Path) -> None:
    assert failure(env, "model", "list", token="wrong", code=4) == "edgefleet: GET /v1/models: HTTP 401: invalid token"
    assert failure(env, "model", "show", "nope", code=3) == (
        "edgefleet: GET /v1/models/nope: HTTP 404: model nope is not known")
    assert failure(env, "telemetry", "ghost", code=3) == (
        "edgefleet: GET /v1/devices/ghost/telemetry: HTTP 404: device ghost is not known")
    assert "HTTP 404: model cls has no version 9" in failure(env, "rollout", "create", "cls", "9", "--devices", "x",
                                                             code=3)
    assert failure(env, "model", "push", "m", str(tmp_path / "missing.onnx")).startswith("edgefleet: cannot read ")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    assert "HTTP 422: not a model" in failure(env, "model", "push", "m", str(junk), code=6)
    assert cli_json(env, "model", "list")["models"][0]["name"] == "cls"  # nothing half-written
    assert failure(env, "--server", "http://127.0.0.1:9", "devices", code=7) == (
        "edgefleet: cannot reach http://127.0.0.1:9: connection refused")


def test_token_from_a_file_or_the_environment_never_the_command_line(env: Env, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(env.server.admin_token + "\n")
    bare = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}

    def run(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(EDGEFLEET), "--server", env.server.url, *args], capture_output=True, text=True,
                              timeout=60, env={**bare, **(extra or {})})

    assert run("--token-file", str(token_file), "model", "list", "--json").returncode == 0
    assert run("model", "list", extra={"EDGEFLEET_ADMIN_TOKEN_FILE": str(token_file)}).returncode == 0
    piped = subprocess.run([str(EDGEFLEET), "--server", env.server.url, "--token-file", "-", "devices"],
                           input=env.server.admin_token, capture_output=True, text=True, timeout=60, env=bare)
    assert piped.returncode == 0, piped.stderr
    nothing = run("model", "list")
    assert nothing.returncode == 4 and "(set EDGEFLEET_ADMIN_TOKEN or pass --token-file)" in nothing.stderr
    old = run("--token", env.server.admin_token, "model", "list")
    assert old.returncode == 0 and old.stderr.startswith("edgefleet: warning: --token is visible to every user")
    missing = run("--token-file", str(tmp_path / "nope"), "model", "list")
    assert missing.returncode == 2 and missing.stderr.startswith("edgefleet: cannot read the token file ")


def test_push_refuses_the_same_file_twice_and_bad_calibration(env: Env, tmp_path: Path) -> None:
    import numpy as np

    assert cli_json(env, "model", "push", "dup", str(env.models[0]))["version"] == 1
    again = failure(env, "model", "push", "dup", str(env.models[0]), code=5)
    assert again.startswith("edgefleet: POST /v1/models/dup/versions: HTTP 409: model dup version 1 is already "
                            "this file")
    assert cli_json(env, "model", "push", "dup", str(env.models[0]), "--force")["version"] == 2
    calibration = tmp_path / "cal.npz"
    np.savez(calibration, image=np.zeros((4, 32, 32), np.float32))  # the model takes [?, 3, 32, 32]
    bad = failure(env, "model", "push", "dup", str(env.models[1]), "--calibration", str(calibration), code=6)
    assert bad == ("edgefleet: POST /v1/models/dup/versions: HTTP 422: calibration input 'image' has rank 3, the "
                   "model wants 4 ([?, 3, 32, 32], sample axis first)")


def test_variants_and_rollout_status_say_which_delta_travels(env: Env, tmp_path: Path) -> None:
    from tests.ota.tensormodels import fine_tuned, image_mlp_weights, make_image_mlp

    weights = image_mlp_weights(51)
    first = cli_json(env, "model", "push", "mlp", str(make_image_mlp(tmp_path / "m1.onnx", weights)))
    cli_json(env, "model", "push", "mlp", str(make_image_mlp(tmp_path / "m2.onnx", fine_tuned(weights, 52))))
    token = env.server.enroll("dq-1")
    requests.post(f"{env.server.url}/v1/devices/dq-1/reports", timeout=5, headers={"Authorization": f"Bearer {token}"},
                  json={"state": "committed", "model": "mlp", "version": 1, "sha256": first["sha256"]}
                  ).raise_for_status()
    created = cli_json(env, "rollout", "create", "mlp", "2", "--devices", "dq-1", "--soak", "0")
    base = first["sha256"][:12]
    status = cli(env, "rollout", "status", str(created["id"])).stdout
    assert "what travels (per kind of device)" in status
    row = next(line for line in status.splitlines() if line.startswith(f"│ {base}"))
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[:4] == [base, "1", "delta-q8", f"delta-q8@{base}"] and float(cells[5]) < 0.3, cells
    table = cli(env, "model", "variants", "mlp", "2").stdout
    assert f" delta-q8@{base} " in table and "deltas into mlp v2" in table
    chosen = [line for line in table.splitlines() if "│ yes " in line]
    assert len(chosen) == 1 and f"delta-q8@{base}" in chosen[0] and " tensor " in chosen[0], table


def test_devices_reset_enroll_token_and_the_approval_queue(env: Env) -> None:
    token = env.server.enroll("en-1")
    manifest = f"{env.server.url}/v1/devices/en-1/manifest"
    done = cli(env, "devices", "reset", "en-1").stdout
    assert done.strip() == "en-1 reset: it may enroll again with the shared token (enrollment: unenrolled)"
    assert requests.get(manifest, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 401
    assert cli_json(env, "devices", "show", "en-1")["enrollment"] == "unenrolled"
    lines = cli(env, "devices", "enroll-token", "en-2", "--ttl-h", "1").stdout.splitlines()
    assert lines[0].startswith("one-time enrollment token for en-2 (valid once, until ") and len(lines) == 2
    enrolled = requests.post(f"{env.server.url}/v1/enroll", json={"device_id": "en-2", "enrollment_token": lines[1]},
                             timeout=5)
    assert enrolled.status_code == 200 and enrolled.json()["status"] == "enrolled"
    assert "waiting for approval" in cli(env, "devices", "pending").stdout  # the table's title; open mode: empty
    assert cli_json(env, "devices", "pending")["devices"] == []
    refused = failure(env, "devices", "approve", "en-2", code=5)
    assert refused == "edgefleet: POST /v1/devices/en-2/approve: HTTP 409: device en-2 is not waiting for approval"
    assert failure(env, "devices", "reset", "nobody", code=3).endswith("HTTP 404: device nobody is not known")
