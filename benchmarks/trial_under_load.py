"""Real device trials under CPU load: how many identical-model updates roll back, and how many 2x-compute ones.

    .venv/bin/python benchmarks/trial_under_load.py [--same 10] [--slower 3] [--stress 2] [--json]

A real update server (local port, SQLite) and an UpdateClient + ModelHost on ONNX Runtime (the
tests' rig) with live traffic; the machine loaded by ``stress-ng --cpu N`` (when installed) for the
whole run. Each trial pushes a new version and rolls it out to the device: ``--same`` versions
identical to the serving one but for the ONNX doc string, then ``--slower`` with twice the compute
(policy: window 1.5 s, 20 counted inferences, max ratio 1.5). Reports rollbacks per kind, and per
trial the live p95 ratio and the ratio of the previous model timed again beside the candidate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx

from benchmarks._stress import start_stress, stop_stress
from tests.ota.helpers import make_slow_classifier, push, roll_out
from tests.ota.rig import Device, Traffic
from tests.support.server import start_server

TRIAL = {"window_s": 1.5, "min_inferences": 20, "max_latency_ratio": 1.5, "warmup_inferences": 5, "warmup_s": 0.3}


def doc_string_copy(source: Path, path: Path, text: str) -> Path:
    model = onnx.load(str(source))
    model.doc_string = text
    onnx.save(model, str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--same", type=int, default=10)
    parser.add_argument("--slower", type=int, default=3)
    parser.add_argument("--stress", type=int, default=2, help="stress-ng --cpu N for the run (0: none)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trial-load-"))
    stress = start_stress(args.stress)
    server = start_server(work / "server")
    outcomes: dict[str, list[dict[str, Any]]] = {"same": [], "slower": []}
    started = time.monotonic()
    try:
        base = make_slow_classifier(work / "v1.onnx", seed=1, depth=4, width=512)
        device = Device(server, work, "load-dev")
        first = push(server.url, server.admin(), "m", base)
        roll_out(server.url, server.admin(), "m", first["version"], ["load-dev"])
        with Traffic(device.host):
            device.update()
        plan = [("same", doc_string_copy(base, work / f"same-{i}.onnx", f"build {i}")) for i in range(args.same)]
        plan += [("slower", make_slow_classifier(work / f"slow-{i}.onnx", seed=1 + i, depth=8, width=512))
                 for i in range(args.slower)]
        for kind, path in plan:
            version = push(server.url, server.admin(), "m", path)
            roll_out(server.url, server.admin(), "m", version["version"], ["load-dev"], trial=TRIAL)
            with Traffic(device.host, pause_s=0.002):
                state = device.update(timeout=120)
            metrics = dict(device.client.ctx.trial_metrics)
            outcomes[kind].append({"state": state, "ratio": metrics.get("latency_ratio"),
                                   "paired": (metrics.get("paired") or {}).get("ratio")})
    finally:
        server.stop()
        stop_stress(stress)
        shutil.rmtree(work, ignore_errors=True)
    result = {"stress_ng_cpu": args.stress if stress is not None else 0,
              "identical": {"trials": len(outcomes["same"]),
                            "rolled_back": sum(o["state"] == "rolled_back" for o in outcomes["same"])},
              "twice_the_compute": {"trials": len(outcomes["slower"]),
                                    "rolled_back": sum(o["state"] == "rolled_back" for o in outcomes["slower"])},
              "details": outcomes, "seconds": round(time.monotonic() - started, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"under stress-ng --cpu {result['stress_ng_cpu']}: identical model rolled back "
              f"{result['identical']['rolled_back']} of {result['identical']['trials']}; twice the compute rolled "
              f"back {result['twice_the_compute']['rolled_back']} of {result['twice_the_compute']['trials']} "
              f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
