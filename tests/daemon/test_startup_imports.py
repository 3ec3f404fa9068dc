"""READY=1 comes before the network stacks: the telemetry and update threads import them after it, on their own.

A fresh interpreter (pytest's own has requests loaded) runs the daemon with MQTT on and an update server URL
with a device token, both pointing at ports nothing listens on; its notifier writes down which of paho,
the update client's HTTP, cryptography and requests were loaded when READY was sent, and which were once
the two threads had run (ssl is not among them: the local API's http.server imports it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.daemon.support import base_config
from tests.support.models import make_onnx_image_classifier
from tests.support.net import free_port

CHILD = """
import json, sys, time
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon.main import Agent
from edgefleet.agent.daemon.systemd import Notifier

STACKS = ("paho.mqtt.client", "edgefleet.agent.ota.http", "cryptography", "requests")

class Recording(Notifier):
    at_ready = None
    status_at_ready = None

    def ready(self, status=""):
        if Recording.at_ready is None:
            Recording.at_ready = [name for name in STACKS if name in sys.modules]
            Recording.status_at_ready = status
        super().ready(status)

agent = Agent(AgentConfig.model_validate(json.loads(sys.argv[1])), notifier=Recording({}))
agent.start()
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not {"paho.mqtt.client", "edgefleet.agent.ota.http"} <= sys.modules.keys():
    time.sleep(0.05)
later = [name for name in STACKS if name in sys.modules]
agent.stop()
print(json.dumps({"at_ready": Recording.at_ready, "status": Recording.status_at_ready, "later": later}))
"""


def test_ready_is_sent_before_the_network_stacks_are_imported(tmp_path: Path) -> None:
    model = make_onnx_image_classifier(tmp_path / "m.onnx")
    config = base_config(tmp_path, model,
                         mqtt={"enabled": True, "host": "127.0.0.1", "port": free_port(),
                               "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
                         server={"url": f"http://127.0.0.1:{free_port()}", "token": "a-device-token",
                                 "poll_interval_s": 60},
                         log_level="WARNING")
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"].startswith("serving m v3"), report  # READY still means serving
    assert report["at_ready"] == [], report
    # the threads did start and reach for the network: MQTT's first attempt, the first poll
    assert {"paho.mqtt.client", "edgefleet.agent.ota.http"} <= set(report["later"]), report
    assert "cryptography" not in report["later"], report  # no manifest came: no signature to check
    assert "requests" not in report["later"], report  # the update client speaks http.client (agent/ota/http.py)
