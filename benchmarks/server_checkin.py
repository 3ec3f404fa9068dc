"""Desired-state check-ins against the real server: p50/p99 latency at a fixed request rate.

The load generator runs in a separate process (asyncio, keep-alive connections, open loop:
latency is measured from each request's scheduled time, so a stalled server is not hidden).
Most check-ins send the ETag they hold (304), the rest fetch the manifest (200). A bare
baseline, GET /healthz at the same rate, is measured in the same run.

    .venv/bin/python benchmarks/server_checkin.py --rate 1000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def _load(port: int, targets: list[tuple[str, str, str | None]], rate: float, total: int,
                connections: int) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[tuple[float, tuple[str, str, str | None]] | None] = asyncio.Queue()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (item := await queue.get()) is not None:
            scheduled, (path, token, etag) = item
            head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            if etag:
                head += f"If-None-Match: {etag}\r\n"
            writer.write((head + "\r\n").encode())
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - scheduled)
        writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.perf_counter() + 0.2
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((scheduled, targets[i % len(targets)]))
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    return latencies


def _run_load(port: int, targets: list[tuple[str, str, str | None]], rate: float, total: int, connections: int,
              out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(_load(port, targets, rate, total, connections)))


def measure(port: int, targets: list[tuple[str, str, str | None]], rate: float, total: int,
            connections: int) -> dict[str, float]:
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    proc = mp.Process(target=_run_load, args=(port, targets, rate, total, connections, out))
    started = time.perf_counter()
    proc.start()
    latencies = sorted(out.get(timeout=total / rate + 120))
    elapsed = time.perf_counter() - started
    proc.join(timeout=10)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"requests": len(latencies), "achieved_rps": len(latencies) / elapsed, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--fresh-every", type=int, default=10, help="one check-in in N has no ETag (200)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    from tests.support.models import make_onnx_image_classifier
    from tests.support.server import start_server

    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), database_url=args.database_url,
                              overrides={"log_level": "WARNING", "rollout_tick_s": 1.0})
        try:
            model = make_onnx_image_classifier(Path(tmp) / "m.onnx")
            requests.post(f"{server.url}/v1/models/bench/versions", headers=server.admin(), timeout=30,
                          files={"file": ("m.onnx", model.read_bytes())}).raise_for_status()
            tokens = {f"dev-{i:04d}": server.enroll(f"dev-{i:04d}", tags=["bench"]) for i in range(args.devices)}
            requests.post(f"{server.url}/v1/rollouts", headers=server.admin(), timeout=30, json={
                "model": "bench", "version": 1, "target": {"tags": ["bench"]}, "waves": [100],
                "gates": {"soak_s": 3600}}).raise_for_status()
            targets: list[tuple[str, str, str | None]] = []
            for i, (device, token) in enumerate(tokens.items()):
                path = f"/v1/devices/{device}/manifest"
                etag = requests.get(server.url + path, headers={"Authorization": f"Bearer {token}"},
                                    timeout=10).headers["ETag"]
                targets.append((path, token, None if i % args.fresh_every == 0 else etag))
            port = int(server.url.rsplit(":", 1)[1])
            total = int(args.rate * args.seconds)
            baseline = measure(port, [("/healthz", "x", None)], args.rate, total, args.connections)
            checkins = measure(port, targets, args.rate, total, args.connections)
        finally:
            server.stop()
    print(json.dumps({"rate": args.rate, "devices": args.devices, "database": args.database_url or "sqlite",
                      "share_304": 1 - 1 / args.fresh_every, "checkins": checkins, "baseline_healthz": baseline,
                      "p99_ratio_vs_baseline": checkins["p99_ms"] / baseline["p99_ms"]}, indent=2))


if __name__ == "__main__":
    main()
