"""``edgefleet``: the operator's CLI over the update server's HTTP API.

Server and token come from ``--server``/``--token`` or EDGEFLEET_URL / EDGEFLEET_ADMIN_TOKEN.
``--json`` prints the server's JSON document; otherwise tables go to the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.errors import EdgefleetError
from server.opcli_client import ServerClient

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return ""
    low, high = min(present), max(present)
    span = (high - low) or 1.0
    return "".join(" " if v is None else SPARK[min(7, int((v - low) / span * 7.999))] for v in values)


def dig(row: Any, path: str) -> Any:
    value = row
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))[:60]
    return str(value)


def ago(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return fmt(ts)
    seconds = max(0.0, time.time() - float(ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def render_table(console: Console, title: str, rows: list[Any], columns: list[tuple[str, str]],
                 formatters: dict[str, Callable[[Any], str]] | None = None) -> None:
    formatters = formatters or {}
    table = Table(title=title, title_justify="left")
    for header, _ in columns:
        table.add_column(header)
    for row in rows:
        table.add_row(*(formatters.get(path, fmt)(dig(row, path)) for _, path in columns))
    console.print(table)


def _items(document: Any, key: str) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict) and isinstance(document.get(key), list):
        return list(document[key])
    return []


class Commands:
    def __init__(self, client: ServerClient, console: Console, as_json: bool) -> None:
        self.client = client
        self.console = console
        self.as_json = as_json

    def emit(self, document: Any, human: Callable[[Any], None]) -> None:
        if self.as_json:
            print(json.dumps(document, indent=2, default=str))
        else:
            human(document)

    # models -------------------------------------------------------------------------------
    def model_push(self, a: argparse.Namespace) -> None:
        meta: dict[str, Any] = {}
        if a.task:
            meta["task"] = a.task
        if a.preprocess:
            meta["preprocess"] = json.loads(a.preprocess)
        result = self.client.push_model(a.name, Path(a.file), labels=Path(a.labels) if a.labels else None,
                                        meta=meta or None,
                                        calibration=Path(a.calibration) if a.calibration else None)
        self.emit(result, lambda r: self.console.print(
            f"pushed [bold]{a.name}[/] version {fmt(dig(r, 'version'))} "
            f"({fmt(dig(r, 'format'))}, sha256 {str(dig(r, 'sha256'))[:12]})"))

    def model_list(self, a: argparse.Namespace) -> None:
        self.emit(self.client.models(), lambda d: render_table(
            self.console, "models", _items(d, "models"),
            [("name", "name"), ("latest", "latest_version"), ("format", "format"), ("task", "task")]))

    def model_show(self, a: argparse.Namespace) -> None:
        def human(d: Any) -> None:
            self.console.print(f"[bold]{d.get('name')}[/]  task {fmt(d.get('task'))}")
            render_table(self.console, "versions", _items(d, "versions"),
                         [("version", "version"), ("format", "format"), ("size", "size"),
                          ("sha256", "sha256"), ("created", "created_at")],
                         {"sha256": lambda v: str(v)[:12], "created_at": ago})
        self.emit(self.client.model(a.name), human)

    def model_variants(self, a: argparse.Namespace) -> None:
        version = a.version or self._latest_version(a.name)
        self.emit(self.client.variants(a.name, version), lambda d: render_table(
            self.console, f"variants of {a.name} v{version}", _items(d, "variants"),
            [("variant", "name"), ("status", "status"), ("format", "format"), ("size", "size"),
             ("agreement", "report.agreement"), ("p50 ms", "report.latency_ms.p50"),
             ("why", "report.reason")]))

    def _latest_version(self, name: str) -> int:
        versions = _items(self.client.model(name), "versions")
        if not versions:
            raise EdgefleetError(f"model {name} has no versions")
        return max(int(v["version"]) for v in versions)

    def model_optimize(self, a: argparse.Namespace) -> None:
        job = self.client.optimize(a.name, a.version, a.target)
        if a.wait and not self.as_json:
            job = self._follow_job(job)
        self.emit(job, lambda j: self.console.print(
            f"job {fmt(j.get('id'))}: {fmt(j.get('state'))} {fmt(j.get('message'))}"))

    def _follow_job(self, job: dict[str, Any]) -> dict[str, Any]:
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeElapsedColumn())
        with Progress(*columns, console=self.console) as progress:
            bar = progress.add_task(f"job {job.get('id')}", total=1.0)
            while job.get("state") not in ("succeeded", "failed", "done", "error"):
                time.sleep(0.5)
                job = self.client.job(job["id"])
                progress.update(bar, completed=float(job.get("progress") or 0.0),
                                description=f"job {job.get('id')}: {job.get('message') or job.get('state')}")
        return job

    # rollouts -----------------------------------------------------------------------------
    def rollout_create(self, a: argparse.Namespace) -> None:
        target: dict[str, Any] = {}
        if a.devices:
            target["device_ids"] = a.devices.split(",")
        if a.tags:
            target["tags"] = a.tags.split(",")
        if a.device_class:
            target["device_class"] = a.device_class
        waves: Any = {"counts": [int(c) for c in a.counts.split(",")]} if a.counts else \
            [float(w) for w in a.waves.split(",")]
        gates = {"min_committed_ratio": a.min_committed, "max_failure_ratio": a.max_failure,
                 "max_p95_regression": a.max_p95_regression, "soak_s": a.soak}
        body = {"model": a.name, "version": a.version, "target": target, "waves": waves,
                "gates": gates, "priority": a.priority, "auto_revert": a.auto_revert}
        self.emit(self.client.create_rollout(body), self._show_rollout)

    def rollout_list(self, a: argparse.Namespace) -> None:
        self.emit(self.client.rollouts(), lambda d: render_table(
            self.console, "rollouts", _items(d, "rollouts"),
            [("id", "id"), ("model", "model"), ("version", "version"), ("state", "state"),
             ("wave", "current_wave"), ("priority", "priority"), ("reason", "reason")]))

    def _show_rollout(self, d: Any) -> None:
        self.console.print(f"rollout [bold]{d.get('id')}[/]: {d.get('model')} v{d.get('version')} — "
                           f"[bold]{d.get('state')}[/] {fmt(d.get('reason')) if d.get('reason') else ''}")
        render_table(self.console, "waves", _items(d, "waves"),
                     [("wave", "index"), ("target", "size"), ("devices", "devices"), ("committed", "committed"),
                      ("failed", "failed"), ("state", "state")])
        devices = _items(d, "devices")
        if devices:
            render_table(self.console, "devices", devices,
                         [("device", "device_id"), ("wave", "wave"), ("state", "state"), ("reason", "reason")])

    def rollout_status(self, a: argparse.Namespace) -> None:
        while True:
            document = self.client.rollout(a.id)
            self.emit(document, self._show_rollout)
            if not a.watch or self.as_json or document.get("state") in ("completed", "aborted"):
                return
            time.sleep(a.interval)

    def rollout_action(self, a: argparse.Namespace) -> None:
        body = {"revert": True} if getattr(a, "revert", False) else None
        self.emit(self.client.rollout_action(a.id, a.action, body), self._show_rollout)

    # devices ------------------------------------------------------------------------------
    def device_list(self, a: argparse.Namespace) -> None:
        self.emit(self.client.devices(), lambda d: render_table(
            self.console, "devices", _items(d, "devices"),
            [("device", "device_id"), ("online", "online"), ("class", "device_class"),
             ("model", "model_name"), ("version", "model_version"), ("runtime", "runtime"),
             ("p95 ms", "p95_ms"), ("last seen", "last_seen")], {"last_seen": ago}))

    def device_show(self, a: argparse.Namespace) -> None:
        def human(d: Any) -> None:
            for key in sorted(d):
                self.console.print(f"{key:>16}: {fmt(d[key]) if key != 'last_seen' else ago(d[key])}")
        self.emit(self.client.device(a.id), human)

    def device_command(self, a: argparse.Namespace) -> None:
        args: dict[str, Any] = {}
        for item in a.arg or []:
            key, _, raw = item.partition("=")
            try:
                args[key] = json.loads(raw)
            except ValueError:
                args[key] = raw
        self.emit(self.client.command(a.id, a.type, args), lambda r: self.console.print(
            f"sent {a.type} to {a.id}: {fmt(r)}"))

    def telemetry(self, a: argparse.Namespace) -> None:
        def human(d: Any) -> None:
            rows = _items(d, "telemetry")
            p95 = [dig(r, "p95_ms") if dig(r, "p95_ms") is not None else dig(r, "payload.inference.latency_ms.p95")
                   for r in rows]
            cpu = [dig(r, "cpu_pct") if dig(r, "cpu_pct") is not None else dig(r, "payload.system.cpu_pct")
                   for r in rows]
            render_table(self.console, f"telemetry of {a.id}", rows[-a.show:],
                         [("seq", "seq"), ("ts", "ts"), ("count", "payload.inference.count"),
                          ("errors", "payload.inference.errors"), ("p95 ms", "payload.inference.latency_ms.p95"),
                          ("fps", "payload.inference.fps"), ("cpu %", "payload.system.cpu_pct"),
                          ("rss MB", "payload.system.rss_mb")], {"ts": ago})
            self.console.print(f"p95 latency {sparkline(p95)}")
            self.console.print(f"cpu %       {sparkline(cpu)}")
        self.emit(self.client.telemetry(a.id, a.limit), human)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet", description=__doc__.split("\n")[0])
    parser.add_argument("--server", default=os.environ.get("EDGEFLEET_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("EDGEFLEET_ADMIN_TOKEN"))
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    groups = parser.add_subparsers(dest="group", required=True)

    model = groups.add_parser("model", help="models, versions and variants").add_subparsers(dest="cmd", required=True)
    push = model.add_parser("push", help="upload a new version of a model")
    push.add_argument("name")
    push.add_argument("file")
    push.add_argument("--labels")
    push.add_argument("--task", choices=["classification", "detection", "other"])
    push.add_argument("--preprocess", help="pre-processing spec as JSON")
    push.add_argument("--calibration", help=".npz of sample inputs for quantization and validation")
    push.set_defaults(run=Commands.model_push)
    model.add_parser("list").set_defaults(run=Commands.model_list)
    show = model.add_parser("show")
    show.add_argument("name")
    show.set_defaults(run=Commands.model_show)
    variants = model.add_parser("variants")
    variants.add_argument("name")
    variants.add_argument("version", type=int, nargs="?")
    variants.set_defaults(run=Commands.model_variants)
    optimize = model.add_parser("optimize", help="make optimized variants for a device class")
    optimize.add_argument("name")
    optimize.add_argument("version", type=int)
    optimize.add_argument("--target", required=True)
    optimize.add_argument("--wait", action="store_true", help="follow the job with a progress bar")
    optimize.set_defaults(run=Commands.model_optimize)

    rollout = groups.add_parser("rollout", help="gated fleet rollouts").add_subparsers(dest="cmd", required=True)
    create = rollout.add_parser("create")
    create.add_argument("name")
    create.add_argument("version", type=int)
    create.add_argument("--devices", help="comma-separated device ids")
    create.add_argument("--tags", help="comma-separated tags")
    create.add_argument("--class", dest="device_class")
    create.add_argument("--waves", default="1,10,50,100", help="percent of the target per wave")
    create.add_argument("--counts", help="explicit device counts per wave, instead of --waves")
    create.add_argument("--min-committed", type=float, default=0.9)
    create.add_argument("--max-failure", type=float, default=0.1)
    create.add_argument("--max-p95-regression", type=float, default=1.5)
    create.add_argument("--soak", type=float, default=30.0, help="seconds each wave must stay healthy")
    create.add_argument("--priority", type=int, default=0)
    create.add_argument("--auto-revert", action="store_true")
    create.set_defaults(run=Commands.rollout_create)
    rollout.add_parser("list").set_defaults(run=Commands.rollout_list)
    status = rollout.add_parser("status")
    status.add_argument("id", type=int)
    status.add_argument("--watch", action="store_true")
    status.add_argument("--interval", type=float, default=2.0)
    status.set_defaults(run=Commands.rollout_status)
    for action in ("pause", "resume", "abort"):
        sub = rollout.add_parser(action)
        sub.add_argument("id", type=int)
        if action == "abort":
            sub.add_argument("--revert", action="store_true", help="send updated devices back")
        sub.set_defaults(run=Commands.rollout_action, action=action)

    device = groups.add_parser("devices", help="the fleet").add_subparsers(dest="cmd")
    device.add_parser("list").set_defaults(run=Commands.device_list)
    dshow = device.add_parser("show")
    dshow.add_argument("id")
    dshow.set_defaults(run=Commands.device_show)
    command = device.add_parser("command", help="send a command over MQTT")
    command.add_argument("id")
    command.add_argument("type")
    command.add_argument("--arg", action="append", help="KEY=VALUE (VALUE parsed as JSON when it can be)")
    command.set_defaults(run=Commands.device_command)

    telemetry = groups.add_parser("telemetry", help="telemetry of one device")
    telemetry.add_argument("id")
    telemetry.add_argument("--limit", type=int, default=200)
    telemetry.add_argument("--show", type=int, default=15, help="rows in the table")
    telemetry.set_defaults(run=Commands.telemetry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):  # `edgefleet devices` alone lists them
        args.run = Commands.device_list
    commands = Commands(ServerClient(args.server, args.token), Console(), args.json)
    try:
        args.run(commands, args)
    except (EdgefleetError, ValueError) as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
