"""edgefleet-demo: the whole loop on one machine, on embedded defaults.

Starts a broker (Mosquitto when installed, else the pure-Python amqtt), the update server
(SQLite, local artifact directory) and a few agents on synthetic video; pushes a model,
rolls v1 out, pushes v2, optimizes it and rolls it out in gated waves while the agents
keep serving and hot-swap; shows the fleet live, prints a summary and the dashboard URL,
and stops everything on Ctrl-C.

``--v2 slower`` makes v2 the same model computed as many times as it takes to be twice as slow
as v1 here (same scores; timed at start, server/demo/slowdown.py), so the latency gate's pause
can be seen. The exit status says how the v2 rollout ended: 0 completed (every agent serving v2),
2 paused by a gate, 3 rolled back by a device's trial, 1 anything else; summary.json holds the
same under ``outcome``, with the reason line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.version import version_line
from edgefleet.server.demo.broker import RunningBroker, start_broker
from edgefleet.server.demo.models import INPUT_SIZE, LABELS, make_classifier
from edgefleet.server.demo.slowdown import Slowdown, slower_model
from edgefleet.server.opcli_client import ServerClient

PREPROCESS: dict[str, Any] = {"resize": "stretch", "color": "RGB", "scale": 1 / 255}
DRIFT_GAIN = 0.5  # --drift DEVICE: that camera's frames at half the brightness
DRIFT_MIN_SAMPLES = 30
V2_KINDS = ("same", "slower")
SLOWDOWN = 2.0  # --v2 slower: v2's median latency over v1's
EXIT_CODES = {"completed": 0, "paused": 2, "rolled_back": 3}
# an upload is inspected in a sandbox process and profiled: on a loaded 2-core box over 30 s
HTTP_TIMEOUT_S = 120.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.workdir: Path = args.workdir.resolve()
        self.broker: RunningBroker | None = None
        self.server_proc: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.agent_api: dict[str, str] = {}
        self.url = ""
        self.client: ServerClient | None = None
        self.server_conf: dict[str, Any] = {}
        self.slowdown: Slowdown | None = None

    # --- start --------------------------------------------------------------------------------
    def step(self, message: str) -> None:
        self.console.print(f"[bold cyan]▶[/] {message}")

    def start_broker(self) -> None:
        self.broker = start_broker(free_port(), self.workdir / "broker", prefer=self.args.broker)
        self.step(f"broker: {self.broker.kind} on 127.0.0.1:{self.broker.port}")

    def start_server(self) -> None:
        from edgefleet.server.cli import init

        assert self.broker is not None
        port = self.args.port or free_port()
        config_path = init(self.workdir / "server", listen=f"127.0.0.1:{port}", mqtt_port=self.broker.port,
                           force=True)
        config = yaml.safe_load(config_path.read_text())
        # every class this demo's agents can report gets the optimized variant first
        config["device_classes"] = {cls: ["onnx-opt", "cpu-int8-static", "cpu-int8-dynamic"]
                                    for cls in ("x86_64", "aarch64", "rpi4", "rpi5", "jetson", "demo")}
        config["rollout_tick_s"] = 0.5
        # a handful of devices: no stampede to spread a wave's pushes over
        config.setdefault("rollouts", {})["push_spread_s"] = 1
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.server_conf = config
        log = (self.workdir / "server" / "server.log").open("ab")
        self.server_proc = subprocess.Popen([sys.executable, "-m", "edgefleet.server.cli",
                                             "run", "--config", str(config_path)],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server_proc.poll() is not None:
                raise EdgefleetError(f"the server exited; see {self.workdir / 'server' / 'server.log'}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            raise EdgefleetError("the server did not answer /healthz within 60 s")
        self.client = ServerClient(self.url, config["admin_token"], timeout=HTTP_TIMEOUT_S)
        self.step(f"update server on {self.url} (SQLite, artifacts in {self.workdir / 'server' / 'artifacts'})")

    def start_agents(self) -> None:
        assert self.broker is not None
        for index in range(self.args.agents):
            device_id = f"cam-{index + 1:02d}"
            state = self.workdir / "agents" / device_id
            state.mkdir(parents=True, exist_ok=True)
            api_port = free_port()
            config = {
                "device_id": device_id,
                "state_dir": str(state),
                "runtime": {"prefer": "auto", "threads": 1, "autotune": False},
                # frames at the model's input size: the reference profile is made from the very same frames
                "source": {"kind": "synthetic", "fps": self.args.fps, "uri": f"{INPUT_SIZE}x{INPUT_SIZE}",
                           "gain": DRIFT_GAIN if device_id == self.args.drift else 1.0},
                # every frame is binned, so the drift window is ready seconds after each swap
                "quality": {"drift": {"every": 1, "window": 200, "min_samples": DRIFT_MIN_SAMPLES}},
                "api": {"listen": f"127.0.0.1:{api_port}"},
                "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "reconnect_max_s": 5},
                "telemetry": {"interval_s": 2},
                "server": {"url": self.url, "enrollment_token": self.server_conf["enrollment_token"],
                           "poll_interval_s": 2, "public_key": str(self.workdir / "server" / "server.pub"),
                           "device_class": "demo", "tags": ["demo", "even" if index % 2 == 0 else "odd"]},
                "update": {"trial": {"window_s": 4, "min_inferences": 10, "max_error_rate": 0.05,
                                     "max_latency_ratio": 5.0}},
                "log_level": "INFO",
            }
            config_path = state / "agent.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            log = (state / "agent.log").open("ab")
            agent_bin = Path(sys.executable).with_name("edgefleet-agent")
            command = [str(agent_bin)] if agent_bin.exists() else [sys.executable, "-m", "edgefleet.agent.cli"]
            self.agents[device_id] = subprocess.Popen([*command, "run", "--config", str(config_path)],
                                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.agent_api[device_id] = f"http://127.0.0.1:{api_port}"
        self.step(f"{len(self.agents)} agents on synthetic {INPUT_SIZE}x{INPUT_SIZE} video at {self.args.fps} fps "
                  f"(state under {self.workdir / 'agents'})")
        if self.args.drift:
            self.step(f"scripted drift: {self.args.drift}'s frames are {DRIFT_GAIN:g}x as bright as the others'")

    # --- the loop -----------------------------------------------------------------------------
    def push(self, version: int, slower: bool = False) -> dict[str, Any]:
        assert self.client is not None
        path = self.workdir / "models" / f"classifier-v{version}.onnx"
        how = ""
        if slower:
            self.slowdown = slower_model(path, version, SLOWDOWN)
            how = f", {self.slowdown.text()}"
        else:
            make_classifier(path, version)
        labels = self.workdir / "models" / "labels.txt"
        labels.write_text("\n".join(LABELS) + "\n")
        meta = {"task": "classification", "preprocess": PREPROCESS}
        calibration = write_calibration(self.workdir / "models" / "calibration.npz")
        record = self.client.push_model("classifier", path, labels=labels, meta=meta, calibration=calibration)
        self.step(f"pushed classifier v{record['version']} ({path.stat().st_size} bytes, sha256 "
                  f"{str(record.get('sha256', ''))[:12]}{how})")
        return dict(record)

    def optimize(self, version: int) -> None:
        assert self.client is not None
        job = self.client.optimize("classifier", version, "cpu")
        self.step(f"optimizing v{version} for class cpu (job {job.get('id')})")
        while job.get("state") not in ("succeeded", "failed"):
            time.sleep(0.5)
            job = self.client.job(job["id"])
        variants = self.client.variants("classifier", version)
        rows = variants if isinstance(variants, list) else variants.get("variants", [])
        for row in rows:
            report = row.get("report") or {}
            size = (report.get("size") or {}).get("raw_ratio")
            detail = report.get("reason") or (f"size x{size}" if size else "")
            self.console.print(f"    {row.get('name'):<22} {row.get('status'):<9} {detail}")

    def rollout(self, version: int, waves: dict[str, Any] | list[float], soak_s: float) -> int:
        assert self.client is not None
        body = {"model": "classifier", "version": version, "target": {"tags": ["demo"]}, "waves": waves,
                "gates": {"min_committed_ratio": 1.0, "max_failure_ratio": 0.34, "soak_s": soak_s}}
        rollout = self.client.create_rollout(body)
        self.step(f"rollout {rollout['id']}: classifier v{version} in {waves_text(waves)}")
        return int(rollout["id"])

    def fleet_table(self, rollout: dict[str, Any] | None) -> Table:
        assert self.client is not None
        devices = self.client.devices()
        rows = devices if isinstance(devices, list) else devices.get("devices", [])
        title = "fleet"
        if rollout:
            title += f" — rollout {rollout.get('id')} v{rollout.get('version')}: {rollout.get('state')}"
            if isinstance(rollout.get("current_wave"), int):  # 0-based in the API, 1-based wherever it is shown
                title += f", wave {rollout['current_wave'] + 1} of {len(rollout.get('waves') or []) or '?'}"
        table = Table(title=title, title_justify="left")
        for header in ("device", "online", "version", "runtime", "p95 ms", "cpu %", "update"):
            table.add_column(header)
        states = {d.get("device_id"): d for d in (rollout or {}).get("devices", [])}
        for device in sorted(rows, key=lambda d: str(d.get("device_id"))):
            device_id = str(device.get("device_id"))
            table.add_row(device_id, "yes" if device.get("online") else "no", str(device.get("model_version") or "-"),
                          str(device.get("runtime") or "-"),
                          f"{device['p95_ms']:.2f}" if isinstance(device.get("p95_ms"), float) else "-",
                          f"{device['cpu_pct']:.1f}" if isinstance(device.get("cpu_pct"), float) else "-",
                          str(states.get(device_id, {}).get("state", "-")))
        return table

    def watch(self, rollout_id: int, timeout_s: float) -> dict[str, Any]:
        assert self.client is not None
        deadline = time.monotonic() + timeout_s
        rollout: dict[str, Any] = {}
        with Live(console=self.console, refresh_per_second=2, transient=False) as live:
            while time.monotonic() < deadline:
                rollout = self.client.rollout(rollout_id)
                live.update(self.fleet_table(rollout))
                if rollout.get("state") in ("completed", "aborted", "paused"):
                    break
                self.check_processes()
                time.sleep(1)
        return rollout

    def wait_enrolled(self, timeout_s: float) -> None:
        assert self.client is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            devices = self.client.devices()
            rows = devices if isinstance(devices, list) else devices.get("devices", [])
            if len(rows) >= len(self.agents):
                self.step(f"{len(rows)} devices enrolled")
                return
            self.check_processes()
            time.sleep(0.5)
        raise EdgefleetError("agents did not enroll in time; see their agent.log files")

    def check_processes(self) -> None:
        for device_id, proc in self.agents.items():
            if proc.poll() is not None:
                raise EdgefleetError(f"agent {device_id} exited with {proc.returncode}; see "
                                     f"{self.workdir / 'agents' / device_id / 'agent.log'}")

    def probe_agents(self) -> dict[str, Any]:
        """One local inference on every agent's API: which version answers now."""
        import numpy as np

        image = {"inputs": {"image": np.full((1, 3, INPUT_SIZE, INPUT_SIZE), 0.5, np.float32).tolist()}}
        answers: dict[str, Any] = {}
        for device_id, api in self.agent_api.items():
            try:
                answer = requests.post(api + "/v1/infer", json=image, timeout=5).json()
                answers[device_id] = answer.get("model", {}).get("version")
            except (requests.RequestException, ValueError) as exc:
                answers[device_id] = f"error: {exc.__class__.__name__}"
        return answers

    def telemetry_flow(self) -> dict[str, Any]:
        """Per device: telemetry stored on the server, gaps in its seq, and the update events seen."""
        assert self.client is not None
        flow: dict[str, Any] = {}
        for device_id in self.agents:
            rows = self.client.telemetry(device_id, 10_000).get("telemetry", [])
            events = self.client.events(device_id, 10_000).get("events", [])
            seqs = sorted([r["seq"] for r in rows] + [e["seq"] for e in events])
            gaps = sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1)
            types = sorted({e["type"] for e in events if str(e["type"]).startswith("update.")})
            installs = [e.get("payload") or {} for e in events if e["type"] == "update.installed"]
            via = {f"v{i.get('version')}": i.get("via") for i in installs}
            flow[device_id] = {"telemetry": len(rows), "events": types, "gaps": gaps, "installed_via": via}
        return flow

    def drift_flags(self, timeout_s: float) -> dict[str, Any]:
        """Each device's drift flag once every one is ready (its window full enough), or at ``timeout_s``."""
        assert self.client is not None
        deadline = time.monotonic() + timeout_s
        flags: dict[str, Any] = {}
        while True:
            devices = self.client.devices()
            rows = devices if isinstance(devices, list) else devices.get("devices", [])
            flags = {str(d.get("device_id")): d.get("drift") or {} for d in rows}
            if all(f.get("ready") for f in flags.values()) or time.monotonic() > deadline:
                return {device: {"drifted": bool(f.get("drifted")), "ready": bool(f.get("ready")),
                                 "max_stat": f.get("max_stat"), "max_psi": f.get("max_psi"),
                                 "synthetic": f.get("synthetic")} for device, f in sorted(flags.items())}
            self.check_processes()
            time.sleep(1)

    def run(self) -> int:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        started = time.monotonic()
        self.start_broker()
        self.start_server()
        self.start_agents()
        self.wait_enrolled(60)
        self.push(1)
        first = self.rollout(1, [100.0], soak_s=0)
        result = self.watch(first, 120)
        if result.get("state") != "completed":
            raise EdgefleetError(f"rollout of v1 ended {result.get('state')}: {result.get('reason')}")
        self.push(2, slower=self.args.v2 == "slower")
        self.optimize(2)
        counts = sorted({1, max(1, len(self.agents) // 2), len(self.agents)})
        second = self.rollout(2, {"counts": counts}, soak_s=self.args.soak)
        result = self.watch(second, 300)
        answers = self.probe_agents()
        drift = self.drift_flags(60)
        flow = self.telemetry_flow()
        ended = outcome(result)
        summary = {"rollout": {"id": second, "state": result.get("state"), "reason": result.get("reason")},
                   "v2": {"kind": self.args.v2, **({"compute": self.slowdown.compute,
                                                     "latency_ratio": round(self.slowdown.ratio, 3)}
                                                    if self.slowdown else {})},
                   "outcome": ended,
                   "served_by_version": answers, "telemetry": flow, "drift": drift, "dashboard": self.url + "/",
                   "seconds": round(time.monotonic() - started, 1)}
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.console.print()
        for device_id, counts in flow.items():
            installed = ", ".join(f"{version} by {via}" for version, via in counts["installed_via"].items()) or "-"
            self.console.print(f"{device_id}: {counts['telemetry']} telemetry messages (seq gaps: {counts['gaps']}), "
                               f"installed {installed}, events: {', '.join(counts['events']) or '-'}", highlight=False)
        reason = f" ({result['reason']})" if result.get("reason") else ""
        self.console.print(f"[bold]rollout {second}: {result.get('state')}[/]{reason}")
        if ended["outcome"] == "rolled_back":
            self.console.print("rolled back by the device trial: " + "; ".join(
                f"{device}: {why}" for device, why in ended["rolled_back"].items()), highlight=False)
        alarms = [device for device, flag in drift.items() if flag["drifted"]]
        self.console.print("drift: " + ", ".join(
            f"{device} {'DRIFTED' if flag['drifted'] else 'ok' if flag['ready'] else 'not ready'}"
            + (f" ({flag['max_stat']} PSI {flag['max_psi']:.2f})" if flag["drifted"] and flag["max_psi"] else "")
            for device, flag in drift.items()) + f"; {len(alarms)} alarm{'s' if len(alarms) != 1 else ''}",
            highlight=False)
        self.console.print("local inference API answers: " + ", ".join(
            f"{device} v{version}" if isinstance(version, int) else f"{device} {version}"
            for device, version in answers.items()), highlight=False)
        self.console.print(f"whole loop in {time.monotonic() - started:.0f} s; summary in "
                           f"{self.workdir / 'summary.json'}", highlight=False)
        code = EXIT_CODES.get(ended["outcome"], 1)
        if code == 0 and not all(v == 2 for v in answers.values()):
            code = 1
        if not self.args.exit_when_done:  # the URL and the CLI line only while there is something to look at
            self.console.print(f"dashboard: [bold]{self.url}/[/]   operator CLI: EDGEFLEET_URL={self.url} "
                               f"EDGEFLEET_ADMIN_TOKEN={self.server_conf['admin_token']} edgefleet devices")
            self.console.print("running; Ctrl-C stops everything")
            while True:
                self.check_processes()
                time.sleep(1)
        return code

    def stop(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for device_id, proc in self.agents.items():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.console.print(f"agent {device_id} did not stop in 10 s; killing it")
                proc.kill()
        if self.server_proc is not None and self.server_proc.poll() is None:
            self.server_proc.send_signal(signal.SIGTERM)
            try:
                self.server_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server_proc.kill()
        if self.broker is not None:
            self.broker.stop()
        self.console.print("stopped: agents, server, broker")


def write_calibration(path: Path) -> Path:
    """The drift reference's inputs: the agents' own synthetic frames, pre-processed as the agents do."""
    import numpy as np

    from edgefleet.agent.daemon.preprocess import Preprocessor
    from edgefleet.agent.daemon.sources import synthetic_frames
    from edgefleet.agent.wire import PreprocessSpec, TensorSpec

    pre = Preprocessor([TensorSpec(name="image", shape=[None, 3, INPUT_SIZE, INPUT_SIZE], dtype="float32")],
                       PreprocessSpec.model_validate(PREPROCESS))
    frames = synthetic_frames(INPUT_SIZE, INPUT_SIZE) * 16  # the source cycles its few frames
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, image=np.concatenate([pre(frame)["image"] for frame in frames]))
    return path


def outcome(rollout: dict[str, Any]) -> dict[str, Any]:
    """How a rollout ended, for a script: completed, paused (by a gate), rolled_back (by a device's trial:
    the devices and their trial's reason), or the state it was left in (a timeout leaves it running)."""
    rolled_back = {str(d.get("device_id")): d.get("reason") for d in rollout.get("devices") or []
                   if d.get("state") == "rolled_back"}
    state = str(rollout.get("state"))
    kind = "rolled_back" if rolled_back else state if state in ("completed", "paused") else f"unfinished: {state}"
    return {"outcome": kind, "reason": rollout.get("reason"), "rolled_back": rolled_back}


def waves_text(waves: dict[str, Any] | list[float]) -> str:
    """``waves 1 %, 100 %`` or ``waves of 1, 2, 3 devices`` (cumulative), not the request's JSON."""
    if isinstance(waves, dict):
        return "waves of " + ", ".join(str(c) for c in waves.get("counts", [])) + " devices"
    return "waves " + ", ".join(f"{p:g} %" for p in waves)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet-demo", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--version", action="version", version=version_line("edgefleet-demo"),
                        help="print the version and exit")
    parser.add_argument("--agents", type=int, default=3, help="agents to start (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second of each agent's synthetic video")
    parser.add_argument("--soak", type=float, default=5.0, help="seconds each wave must stay healthy")
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto",
                        help="MQTT broker (auto: Mosquitto when installed, else amqtt)")
    parser.add_argument("--workdir", type=Path, default=Path("demo-state"),
                        help="where state, logs and summary.json go (emptied first; default: %(default)s)")
    parser.add_argument("--exit-when-done", action="store_true", help="stop after the rollout instead of waiting")
    parser.add_argument("--v2", choices=V2_KINDS, default="same",
                        help="v2 is the same kind of model (same), or the same model computed as many times as "
                             f"it takes to be x{SLOWDOWN:g} as slow as v1 here, timed at start (slower): same scores, "
                             "for the latency gate to pause (default: %(default)s)")
    parser.add_argument("--drift", metavar="DEVICE", default=None,
                        help="scripted drift: DEVICE (e.g. cam-02) sees darker frames and raises a drift alarm")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.drift is not None and args.drift not in {f"cam-{i + 1:02d}" for i in range(args.agents)}:
        parser.error(f"--drift {args.drift}: no such device (cam-01 .. cam-{args.agents:02d})")
    console = Console()
    demo = Demo(args, console)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return demo.run()
    except KeyboardInterrupt:
        console.print("\ninterrupted")
        return 0
    except EdgefleetError as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    finally:
        demo.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
