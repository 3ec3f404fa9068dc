"""The demo's rollout gates under CPU load: how often an identical v2 is paused or rolled back, and a 2x one.

    nice -n 5 .venv/bin/python benchmarks/demo_gates_under_load.py --runs 10 --stress 2 [--json]

Runs ``edgefleet-demo --exit-when-done`` ``--runs`` times with ``--v2 same`` (v2 the same kind of tiny
model) and ``--runs`` times with ``--v2 slower`` (the same model computed twice), alternately, while
``stress-ng --cpu K`` loads the machine for the whole run (started and stopped here; without stress-ng
the runs go unloaded and say so). Each run is the whole demo: broker, server, agents, v1, v2 optimized
and rolled out in waves of 1 and all devices (relative comparison against control devices in wave 1,
paired against the devices' pre-update window in the last). Counts per kind how the v2 rollout ended:
completed, paused (a server gate), rolled back (a device's trial); prints the reasons, the latency
gate's statistics of every wave it passed (the server log's advance lines) and the drift alarms per
device. The slower v2 is timed by the demo itself against v1 (server/demo/slowdown.py: the fewest
copies of the model whose median latency is x2 v1's); each run's copies and ratio are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._stress import start_stress, stop_stress

KINDS = ("same", "slower")
GATE_LINE = re.compile(r"rollout 2: (advance|complete|pause) (.*)$")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def gate_lines(server_log: Path) -> list[str]:
    """What the server decided about the v2 rollout's waves: its advance, complete and pause lines."""
    if not server_log.exists():
        return []
    found = []
    for line in server_log.read_text(errors="replace").splitlines():
        match = GATE_LINE.search(line)
        if match:
            found.append(f"{match.group(1)}: {match.group(2)}")
    return found


def one_run(demo: list[str], kind: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [*demo, "--exit-when-done", "--v2", kind, "--agents", str(args.agents), "--soak", str(args.soak),
               "--fps", str(args.fps), "--workdir", str(workdir)]
    if args.drift:
        command += ["--drift", args.drift]
    started = time.monotonic()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.run_timeout, check=False)
        code: int | None = proc.returncode
        tail = (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired as exc:
        code, tail = None, str(exc.stdout or "")[-1500:]
    seconds = time.monotonic() - started
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    ended = summary.get("outcome") or {"outcome": "no summary", "reason": None, "rolled_back": {}}
    run = {"kind": kind, "v2": summary.get("v2"), "exit": code, "seconds": round(seconds, 1),
           "outcome": ended["outcome"],
           "reason": ended.get("reason"), "rolled_back": ended.get("rolled_back") or {},
           "gate": gate_lines(workdir / "server" / "server.log"),
           "drift": {d: {"drifted": f.get("drifted"), "ready": f.get("ready"), "max_stat": f.get("max_stat")}
                     for d, f in (summary.get("drift") or {}).items()}}
    if not summary:
        run["tail"] = tail
    return run


def tally(runs: list[dict[str, Any]]) -> dict[str, Any]:
    per_kind: dict[str, Any] = {}
    for kind in KINDS:
        mine = [r for r in runs if r["kind"] == kind]
        if not mine:
            continue
        outcomes = Counter(r["outcome"] for r in mine)
        per_kind[kind] = {"runs": len(mine), "completed": outcomes["completed"], "paused": outcomes["paused"],
                          "rolled_back": outcomes["rolled_back"],
                          "other": {k: v for k, v in outcomes.items()
                                    if k not in ("completed", "paused", "rolled_back")},
                          "median_run_s": float(np.median([r["seconds"] for r in mine]))}
    alarms: dict[str, dict[str, int]] = defaultdict(lambda: {"alarms": 0, "ready": 0, "runs": 0})
    for run in runs:
        for device, flag in run["drift"].items():
            alarms[device]["runs"] += 1
            alarms[device]["ready"] += bool(flag["ready"])
            alarms[device]["alarms"] += bool(flag["drifted"])
    return {"kinds": per_kind, "drift": dict(sorted(alarms.items()))}


def report(result: dict[str, Any]) -> None:
    for run in result["runs"]:
        line = f"  {run['kind']:<6} {run['outcome']:<12} {run['seconds']:6.1f} s"
        slowdown = run.get("v2") or {}
        if slowdown.get("compute"):
            line += f"  (v2: model x{slowdown['compute']}, x{slowdown['latency_ratio']:.2f} v1's median latency)"
        if run["reason"] and run["outcome"] != "completed":
            line += f"  {run['reason']}"
        for device, why in run["rolled_back"].items():
            line += f"  [{device} rolled back: {why}]"
        print(line)
        for gate in run["gate"]:
            print(f"           {gate}")
        if "tail" in run:
            print("           no summary.json; the demo's last output:\n" + run["tail"])
    for kind, counts in result["tally"]["kinds"].items():
        other = ", ".join(f"{k} {v}" for k, v in counts["other"].items())
        print(f"{kind}: {counts['runs']} runs: completed {counts['completed']}, paused {counts['paused']}, "
              f"rolled back {counts['rolled_back']}" + (f", {other}" if other else "")
              + f" (median {counts['median_run_s']:.0f} s a run)")
    print("drift alarms: " + ", ".join(f"{device} {c['alarms']} of {c['ready']} ready runs ({c['runs']} runs)"
                                       for device, c in result["tally"]["drift"].items()))
    if "stopped_early" in result:
        print(f"stopped early: {result['stopped_early']}")
    print(f"load: {result['load']}; uptime before: {result['uptime_before']}; after: {result['uptime_after']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="demo runs of each kind (default: %(default)s)")
    parser.add_argument("--stress", type=int, default=2, help="stress-ng --cpu N during the runs (0: no load)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="which v2s, comma-separated (default: %(default)s)")
    parser.add_argument("--agents", type=int, default=3,
                        help="agents per demo: 3 is the fewest with a control cohort beside a 1-device wave and a "
                             "last wave judged against the devices' pre-update window (default: %(default)s)")
    parser.add_argument("--soak", type=float, default=1.0, help="demo --soak (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=10.0, help="demo --fps (default: %(default)s)")
    parser.add_argument("--drift", metavar="DEVICE", default=None, help="demo --drift DEVICE in every run")
    parser.add_argument("--run-timeout", type=float, default=900.0, help="seconds one demo run may take")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no run after this many minutes (the runs that finished are reported)")
    parser.add_argument("--keep", action="store_true", help="keep the demo workdirs (their logs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in KINDS for k in kinds):
        parser.error(f"--kinds: some of {', '.join(KINDS)}")
    demo_bin = Path(sys.executable).with_name("edgefleet-demo")
    demo = [str(demo_bin)] if demo_bin.exists() else [
        sys.executable, "-c", "import sys; from edgefleet.server.demo import main; sys.exit(main())"]
    work = Path(tempfile.mkdtemp(prefix="demo-gates-"))
    result: dict[str, Any] = {"uptime_before": uptime(), "runs": [],
                              "settings": {"agents": args.agents, "soak": args.soak, "fps": args.fps,
                                           "stress_cpus": args.stress, "drift": args.drift}}
    stress = start_stress(args.stress)
    result["load"] = f"stress-ng --cpu {args.stress}" if stress is not None else "none"
    started = time.monotonic()
    try:
        for index in range(args.runs):
            for kind in kinds:  # alternately, so both kinds see the same spells of load
                if args.max_minutes is not None and time.monotonic() - started > args.max_minutes * 60:
                    result["stopped_early"] = f"no run started after {args.max_minutes:g} minutes"
                    break
                run = one_run(demo, kind, work / f"{kind}-{index}", args)
                result["runs"].append(run)
                print(f"run {len(result['runs'])}: {kind} {run['outcome']} in {run['seconds']:.0f} s"
                      + (f" ({run['reason']})" if run["reason"] and run["outcome"] != "completed" else ""),
                      file=sys.stderr if args.json else sys.stdout, flush=True)
                if stress is not None and stress.poll() is not None:
                    result["load"] += f" (it exited with {stress.returncode} after run {len(result['runs'])})"
                    stress = None
            if "stopped_early" in result:
                break
    except KeyboardInterrupt:
        result["interrupted"] = True
    finally:
        stop_stress(stress)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["uptime_after"] = uptime()
    result["tally"] = tally(result["runs"])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
