"""Dashboard and /metrics cost with N devices fed through a real Mosquitto into the real server.

    .venv/bin/python benchmarks/dashboard_render.py --devices 1000 --samples 20
Prints the median wall time of GET / (the device table shows the first 500), of a device page with
``--samples`` telemetry points, and of a /metrics scrape; plus GET /healthz as the bare baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.dashboard.fleet import birth, connect, telemetry
from tests.support.broker import Mosquitto
from tests.support.net import wait_until
from tests.support.server import start_server


def timed(url: str, headers: dict[str, str], runs: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        response = requests.get(url, headers=headers, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        size = len(response.content)
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=20, help="telemetry messages per device")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work, extra_conf="max_queued_messages 0\n").start()  # no drops under load
        server = start_server(work, mqtt_port=broker.port, overrides={"telemetry": {"batch_interval_s": 0.2}})
        client = connect(broker.port)
        try:
            wait_until(lambda: requests.get(server.url + "/healthz", timeout=2).json()["mqtt"]["connected"])
            now = time.time()
            for i in range(args.devices):
                device = f"dev-{i:05d}"
                client.publish(f"edgefleet/v1/devices/{device}/status", json.dumps(birth(1, 1 + i % 2)), qos=1)
                for seq in range(1, args.samples + 1):
                    doc = telemetry(seq, now - 10 * (args.samples - seq), p50=1.0 + seq % 5, p95=3.0 + seq % 7,
                                    cpu=20.0 + seq % 30, version=1 + i % 2, drift={"psi": (i % 10) / 20})
                    info = client.publish(f"edgefleet/v1/devices/{device}/telemetry", json.dumps(doc), qos=1)
            info.wait_for_publish(60)
            admin = server.admin()
            total = args.devices * (args.samples + 1)
            wait_until(lambda: _received(server.url, admin) >= total, timeout=240, interval=0.5)
            time.sleep(1.0)
            figures = {
                "devices": args.devices, "samples_per_device": args.samples,
                "healthz_ms": timed(server.url + "/healthz", admin, args.runs)[0],
                "overview_ms": timed(server.url + "/", admin, args.runs)[0],
                "overview_bytes": timed(server.url + "/", admin, 1)[1],
                "device_page_ms": timed(server.url + "/devices/dev-00000", admin, args.runs)[0],
                "metrics_ms": timed(server.url + "/metrics", admin, args.runs)[0],
            }
        finally:
            client.loop_stop()
            client.disconnect()
            server.stop()
            broker.stop()
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:>20}: {value:.1f}" if isinstance(value, float) else f"{key:>20}: {value}")


def _received(url: str, headers: dict[str, str]) -> int:
    for line in requests.get(url + "/metrics", headers=headers, timeout=10).text.splitlines():
        if line.startswith("edgefleet_ingest_received_total "):
            return int(float(line.split()[1]))
    return 0


if __name__ == "__main__":
    main()
