"""20 consecutive OTA updates under continuous load, through the real update server.

    .venv/bin/python benchmarks/ota_swap.py [--updates 20] [--threads 2]

Load threads call ModelHost.infer in a loop while the UpdateClient downloads, test-loads,
hot-swaps and trials each new version. Prints requests issued / answered / failed / dropped,
the steady p99 (measured in the same run, before the first update) and the longest inference
and the longest gap between two answers while a swap was in progress.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgefleet.agent.daemon.host import ModelHost
from tests.ota.helpers import image, make_classifier, push, roll_out
from tests.ota.rig import Device
from tests.support.server import start_server


class Load:
    def __init__(self, host: ModelHost, threads: int) -> None:
        self.host = host
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.issued = self.answered = self.failed = 0
        self.samples: list[tuple[float, float, int]] = []  # (end time, latency, version)
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(threads)]

    def loop(self) -> None:
        feeds = {"image": image(1)}
        while not self.stop.is_set():
            with self.lock:
                self.issued += 1
            start = time.perf_counter()
            try:
                _, meta = self.host.infer(feeds)
            except Exception:
                with self.lock:
                    self.failed += 1
                continue
            end = time.perf_counter()
            with self.lock:
                self.answered += 1
                self.samples.append((end, end - start, meta.version))
            time.sleep(0.0005)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = start_server(root)
        try:
            device = Device(server, root, "bench-swap", trial={"window_s": 0.3, "min_inferences": 10,
                                                               "max_latency_ratio": None})
            swaps: list[tuple[float, float]] = []
            real_swap = device.host.swap

            def timed_swap(*a: object, **k: object) -> object:
                start = time.perf_counter()
                try:
                    return real_swap(*a, **k)  # type: ignore[arg-type]
                finally:
                    swaps.append((start, time.perf_counter()))

            device.host.swap = timed_swap  # type: ignore[method-assign]
            push(server.url, server.admin(), "swap", make_classifier(root / "m0.onnx", seed=0))
            roll_out(server.url, server.admin(), "swap", 1, ["bench-swap"])
            assert device.update() == "committed"
            swaps.clear()
            load = Load(device.host, args.threads)
            for thread in load.threads:
                thread.start()
            time.sleep(2.0)
            steady_end = time.perf_counter()
            started = time.perf_counter()
            outcomes = []
            for i in range(1, args.updates + 1):
                push(server.url, server.admin(), "swap", make_classifier(root / f"m{i}.onnx", seed=i))
                roll_out(server.url, server.admin(), "swap", i + 1, ["bench-swap"])
                outcomes.append(device.update(timeout=60))
            elapsed = time.perf_counter() - started
            load.stop.set()
            for thread in load.threads:
                thread.join(5)
        finally:
            server.stop()
    steady = np.array([lat for end, lat, _ in load.samples if end <= steady_end])
    ends = np.array([end for end, _, _ in load.samples])
    gaps = np.diff(np.sort(ends))
    steady_gaps = gaps[: max(1, int((ends <= steady_end).sum()) - 1)]
    during_lat = [lat for end, lat, _ in load.samples for s, e in swaps if s <= end and end - lat <= e]
    during_gap = 0.0
    sorted_ends = np.sort(ends)
    for s, e in swaps:
        window = sorted_ends[(sorted_ends >= s - 0.05) & (sorted_ends <= e + 0.05)]
        before = sorted_ends[sorted_ends < s]
        after = sorted_ends[sorted_ends > e]
        points = np.concatenate([before[-1:], window, after[:1]])
        if len(points) > 1:
            during_gap = max(during_gap, float(np.diff(points).max()))
    p99 = float(np.percentile(steady, 99)) * 1000
    versions = sorted({v for _, _, v in load.samples})
    print(f"updates: {len(outcomes)} ({outcomes.count('committed')} committed) in {elapsed:.1f}s; "
          f"versions served: {versions[0]}..{versions[-1]}; swaps: {len(swaps)}")
    print(f"requests: issued {load.issued}, answered {load.answered}, failed {load.failed}, "
          f"dropped {load.issued - load.answered - load.failed}")
    print(f"steady inference latency: p50 {np.percentile(steady, 50) * 1000:.3f} ms, p99 {p99:.3f} ms "
          f"(n={len(steady)})")
    longest = max(during_lat) * 1000 if during_lat else 0.0
    print(f"longest inference overlapping a swap: {longest:.3f} ms ({longest / p99:.2f}x steady p99)")
    print(f"longest gap between answers around a swap: {during_gap * 1000:.3f} ms vs steady p99 gap "
          f"{np.percentile(steady_gaps, 99) * 1000:.3f} ms")
    return 0 if load.failed == 0 and load.issued == load.answered else 1


if __name__ == "__main__":
    sys.exit(main())
