"""Power cuts at scale: ``kill -9`` a real agent at random instants of its updates, many times over.

    .venv/bin/python benchmarks/power_cut.py                      # 200 cycles, 2 agents at once
    .venv/bin/python benchmarks/power_cut.py --cycles 1000 --agents 2 --seed 7
    .venv/bin/python benchmarks/power_cut.py --outage-s 60        # then the one-minute broker/server outages

Starts a real Mosquitto and the real update server, then runs the same loop as
tests/reliability/test_power_cut.py (tests/reliability/powercut.py) and prints one JSON document:
cycles, how many updates finished (new version serving) and how many rolled back (previous version
serving), the state saved at each kill, restart-to-serving latency, and 0 corrupt (the loop stops at the
first inconsistency). ``--outage-s`` also runs tests/reliability/test_outages.py with that outage length.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.powercut import run_parallel  # noqa: E402
from tests.support.broker import Mosquitto  # noqa: E402
from tests.support.server import start_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kill-window-s", type=float, default=1.6)
    parser.add_argument("--outage-s", type=float, default=None, help="also run the outage test with this length")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with tempfile.TemporaryDirectory(prefix="edgefleet-powercut-") as tmp:
        base = Path(tmp)
        (base / "broker").mkdir()
        broker = Mosquitto(base / "broker", persistence=True).start()
        server = start_server(base, mqtt_port=broker.port)
        try:
            report = run_parallel(server, broker.port, base / "run", cycles=args.cycles, seed=seed,
                                  agents=args.agents, kill_window_s=args.kill_window_s)
        finally:
            server.stop()
            broker.stop()
    summary = report.summary()
    summary["cycles_per_minute"] = round(report.cycles / report.seconds * 60, 1)
    print(json.dumps({"power_cuts": summary}, indent=1))
    if args.outage_s is not None:
        env = dict(os.environ, RELIABILITY_OUTAGE_S=str(args.outage_s), PYTHONPATH=str(ROOT))
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "tests/reliability/test_outages.py"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("outages of")), done.stdout[-2000:])
        print(json.dumps({"outages": {"outage_s": args.outage_s, "passed": done.returncode == 0, "result": line}},
                         indent=1))
        if done.returncode != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
