"""Start the real update server (``edgefleet-server run``) on a free port, for tests.

    server = start_server(tmp_path, mqtt_port=broker.port)   # mqtt_port=None: MQTT off
    requests.get(server.url + "/healthz")
    server.stop()
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.support.net import SLOWDOWN, free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningServer:
    url: str
    admin_token: str
    enrollment_token: str
    public_key_path: Path
    config_path: Path
    workdir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def enroll(self, device_id: str, *, device_class: str | None = None, tags: list[str] | None = None,
               hw: dict[str, Any] | None = None, current_token: str | None = None) -> str:
        """Enroll a device over HTTP (an enrolled one re-enrolls with ``current_token``); return its token."""
        response = requests.post(self.url + "/v1/enroll", json={
            "device_id": device_id, "enrollment_token": self.enrollment_token, "device_class": device_class,
            "tags": tags or [], "hw": hw or {}}, timeout=10,
            headers={"Authorization": f"Bearer {current_token}"} if current_token else {})
        response.raise_for_status()
        return str(response.json()["token"])

    def metric(self, name: str) -> float:
        """An unlabelled series of ``/metrics`` (as the operator scrapes it); asserts that it is exported."""
        text = requests.get(self.url + "/metrics", headers=self.admin(), timeout=10).text
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert found, f"{name} missing from /metrics"
        return float(found.group(1))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash (no clean-up of any kind)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(tmp_path: Path, mqtt_port: int | None = None, *, database_url: str | None = None,
                 overrides: dict[str, Any] | None = None, timeout: float = 30.0,
                 env: dict[str, str] | None = None) -> RunningServer:
    """``edgefleet-server init`` into ``tmp_path/server``, adjust the config, run it; wait for /healthz."""
    workdir = tmp_path / "server"
    config_path = write_config(workdir, mqtt_port, database_url=database_url, overrides=overrides)
    return launch(config_path, timeout=timeout, env=env)


def write_config(workdir: Path, mqtt_port: int | None = None, *, database_url: str | None = None,
                 overrides: dict[str, Any] | None = None) -> Path:
    """``edgefleet-server init`` into ``workdir`` (listening on a free port), then the test's settings."""
    from edgefleet.server.cli import init

    config_path = init(workdir, listen=f"127.0.0.1:{free_port()}", mqtt_port=mqtt_port or 1883, force=True)
    config = yaml.safe_load(config_path.read_text())
    config["mqtt"]["enabled"] = mqtt_port is not None
    config["rollout_tick_s"] = 0.2
    if SLOWDOWN > 1:  # emulated (qemu): inspecting an upload in the sandbox takes that much longer
        config.setdefault("sandbox", {})["inspect_timeout_s"] = 45.0 * SLOWDOWN
    if database_url:
        config["database_url"] = database_url
    for key, value in (overrides or {}).items():
        config[key] = value
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path


def launch(config_path: Path, *, timeout: float = 30.0, env: dict[str, str] | None = None,
           log_name: str = "server.log") -> RunningServer:
    """Run ``edgefleet-server run --config config_path``; wait until /healthz answers."""
    config = yaml.safe_load(config_path.read_text())
    workdir = config_path.parent
    url = f"http://{config['listen']}"
    log_path = workdir / log_name
    environ = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet.server.cli", "run", "--config", str(config_path)],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=environ)
    server = RunningServer(url=url, admin_token=config["admin_token"], enrollment_token=config["enrollment_token"],
                           public_key_path=Path(config["signing_key"]).with_name("server.pub"),
                           config_path=config_path, workdir=workdir, proc=proc, log_path=log_path)
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edgefleet-server exited with {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            if requests.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"edgefleet-server did not answer within {timeout}s:\n{server.log()[-3000:]}")
