"""What the typed answer of an operator listing costs against the untyped one, measured in the same run.

    .venv/bin/python benchmarks/api_bodies.py [--devices 10000] [--runs 5] [--json]

``GET /v1/devices`` for ``--devices`` devices (each with its hardware probe, ingest counts, desired state and
drift flag), serialized the way FastAPI did before the routes had response models (``jsonable_encoder`` then
``json.dumps``: the baseline) and the way it does now (validated against ``DeviceList``, then pydantic's
``dump_json`` with ``exclude_unset``, server/api/routing.py). Both must give the same JSON document. Prints
the best of ``--runs`` in ms and the ratio to the baseline. The device routes that matter for a fleet
(manifest, reports, downloads) send raw responses and pay neither.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.encoders import jsonable_encoder
from pydantic import TypeAdapter

from edgefleet.server.api.public.devices import DeviceList


def device(i: int) -> dict[str, Any]:
    return {"device_id": f"cam-{i:05d}", "device_class": "rpi4", "tags": ["lab", "north"], "online": True,
            "session": 3, "last_seen": 1.7e9 + i, "enrolled_at": 1.7e9, "agent_version": "0.1.0",
            "model_name": "detector", "model_version": 2, "model_sha256": "a" * 64, "runtime": "onnxruntime",
            "delegate": "CPUExecutionProvider", "p95_ms": 6.5 + i % 7, "cpu_pct": 40.0, "update_state": "committed",
            "update_reason": None, "hw": {"runtimes": ["onnxruntime"], "cpu": {"cores": 4, "model": "Cortex-A72"},
                                          "mem_mb": 3800},
            "enrollment": "enrolled", "pending_since": None, "epoch": 1,
            "ingest": {"rejected": 0, "last_reason": None, "last_rejected_at": None, "ts_replaced": 0},
            "desired": {"version_id": 2, "rollout_id": 1, "revert": False, "issued_at": 1.7e9, "generation": 4},
            "drift": {"model": "detector", "version": 2, "drifted": False, "ready": True, "max_psi": 0.05,
                      "max_stat": "mean", "samples": 500, "threshold": 0.2}}


def best_ms(fn: Callable[[], bytes], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    doc = {"devices": [device(i) for i in range(args.devices)]}
    adapter = TypeAdapter(DeviceList)

    def untyped() -> bytes:
        return json.dumps(jsonable_encoder(doc), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()

    def typed() -> bytes:
        return adapter.dump_json(adapter.validate_python(doc), exclude_unset=True)

    if json.loads(untyped()) != json.loads(typed()):
        print("the typed answer is not the untyped one", file=sys.stderr)
        return 1
    baseline, now = best_ms(untyped, args.runs), best_ms(typed, args.runs)
    result = {"devices": args.devices, "untyped_ms": round(baseline, 1), "typed_ms": round(now, 1),
              "ratio": round(now / baseline, 3), "bytes": len(typed())}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"GET /v1/devices, {args.devices} devices ({result['bytes']} bytes, the same JSON both ways)")
        print(f"  untyped (jsonable_encoder + json.dumps): {baseline:8.1f} ms")
        print(f"  typed (DeviceList + dump_json):          {now:8.1f} ms   x{now / baseline:.2f} of the untyped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
