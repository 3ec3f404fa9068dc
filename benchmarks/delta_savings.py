"""Bytes on the wire for a "fine-tuned" model update: bsdiff4 delta against the full artifact.

    .venv/bin/python benchmarks/delta_savings.py [--hidden 2048] [--tweak-pct 1.0]

A two-layer classifier (same architecture) with ``tweak-pct`` percent of its first layer's
weights changed. The agent updates twice through the real server: once with no delta on offer
(full artifact), once with the delta; the bytes it received are counted by the downloader.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ota.helpers import make_big_classifier, push, roll_out
from tests.ota.rig import Device, Traffic
from tests.support.server import start_server


def wait_delta(server: object, from_sha: str, to_sha: str, timeout: float = 120.0) -> None:
    """Have the server make the patch from→to (POST: a background job) and wait until it is made."""
    url = f"{server.url}/v1/deltas/{from_sha}/{to_sha}"  # type: ignore[attr-defined]
    admin = server.admin()  # type: ignore[attr-defined]
    started = requests.post(url, headers=admin, timeout=10)
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + timeout
    while requests.get(url, headers=admin, timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the delta job did not finish"
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--tweak-pct", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = make_big_classifier(root / "base.onnx", seed=5, hidden=args.hidden)
        weights = 192 * args.hidden
        tuned = make_big_classifier(root / "tuned.onnx", seed=5, hidden=args.hidden,
                                    tweak=max(1, int(weights * args.tweak_pct / 100)))
        model_size = tuned.stat().st_size
        server = start_server(root)
        try:
            results = {}
            for mode in ("full", "delta"):
                name = f"delta-{mode}"
                device = Device(server, root, f"bench-{mode}", trial={"window_s": 0.2, "min_inferences": 3})
                v1 = push(server.url, server.admin(), name, base)
                roll_out(server.url, server.admin(), name, 1, [device.config.device_id])
                with Traffic(device.host):
                    assert device.update() == "committed"
                v2 = push(server.url, server.admin(), name, tuned)
                if mode == "delta":  # the operator has the patch made first (a job), so the manifest offers it
                    wait_delta(server, v1["sha256"], v2["sha256"])
                before = device.client.bytes_transferred
                roll_out(server.url, server.admin(), name, 2, [device.config.device_id])
                start = time.perf_counter()
                with Traffic(device.host):
                    assert device.update() == "committed"
                results[mode] = (device.client.bytes_transferred - before, time.perf_counter() - start)
                assert device.host.meta is not None and device.host.meta.sha256 == v2["sha256"]
        finally:
            server.stop()
    full, delta = results["full"][0], results["delta"][0]
    print(f"model: {model_size} bytes, {args.tweak_pct}% of the first layer's {weights} weights changed")
    print(f"full artifact: {full} bytes transferred (update took {results['full'][1]:.2f}s)")
    print(f"delta:         {delta} bytes transferred (update took {results['delta'][1]:.2f}s)")
    print(f"delta / full: {delta / full:.3f} ({(1 - delta / full) * 100:.1f}% saved)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
