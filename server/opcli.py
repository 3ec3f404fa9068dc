# PYTHON_ARGCOMPLETE_OK
"""edgefleet: the operator's CLI over the update server's HTTP API.

The server comes from --server or EDGEFLEET_URL; the admin token from EDGEFLEET_ADMIN_TOKEN,
--token-file FILE or EDGEFLEET_ADMIN_TOKEN_FILE (never from the command line, where `ps` shows it).
--json prints the server's JSON document; otherwise tables go to the terminal.
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

from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.version import version_line
from edgefleet.server.opcli_client import ApiError, ExitCode, ServerClient

SPARK = "▁▂▃▄▅▆▇█"
JOB_DONE = ("succeeded", "failed")


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
                 formatters: dict[str, Callable[[Any], str]] | None = None, wrap: Sequence[str] = ()) -> None:
    """A table; the columns named in ``wrap`` fold their text onto more lines rather than being cut."""
    formatters = formatters or {}
    table = Table(title=title, title_justify="left")
    for header, _ in columns:
        if header in wrap:
            table.add_column(header, overflow="fold", ratio=1, min_width=20)
        else:
            table.add_column(header, no_wrap=bool(wrap))
    for row in rows:
        table.add_row(*(formatters.get(path, fmt)(dig(row, path)) for _, path in columns))
    console.print(table)


def _short_sha(value: Any) -> str:
    return str(value)[:12] if value else "-"


def _items(document: Any, key: str) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict) and isinstance(document.get(key), list):
        return list(document[key])
    return []


class Commands:
    def __init__(self, client: ServerClient, console: Console, as_json: bool, *,
                 progress_console: Console | None = None, poll_s: float = 0.5) -> None:
        self.client = client
        self.console = console
        self.as_json = as_json
        self.progress_console = progress_console or Console(stderr=True)
        self.poll_s = poll_s

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
                                        calibration=Path(a.calibration) if a.calibration else None, force=a.force)
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

    def model_drift(self, a: argparse.Namespace) -> None:
        version = a.version or self._latest_version(a.name)

        def human(d: Any) -> None:
            profile = d.get("profile") or {}
            self.console.print(
                f"[bold]{a.name}[/] v{version}: {d.get('drifted')} of {d.get('ready')} reporting devices drifted"
                f" ({_pct(100.0 * float(d.get('drifted_fraction') or 0.0))})"
                + (" [red]⚑ flagged[/]" if d.get("flagged") else "")
                + f"; reference profile: {profile.get('source', 'none')}, {fmt(profile.get('samples'))} samples",
                highlight=False)
            rows = [{"device_id": k, **(v or {})} for k, v in (d.get("devices") or {}).items()]
            render_table(self.console, "drift", rows,
                         [("device", "device_id"), ("drifted", "drifted"), ("max PSI", "max_psi"),
                          ("statistic", "max_stat"), ("samples", "samples"), ("threshold", "threshold")])
        self.emit(self.client.drift(a.name, version), human)

    def model_accuracy(self, a: argparse.Namespace) -> None:
        def human(d: Any) -> None:
            overall = d.get("overall") or {}
            self.console.print(f"overall: {fmt(overall.get('accuracy'))} over {fmt(overall.get('n'))} labelled "
                               f"samples ({fmt(d.get('unlabeled'))} unlabelled)", highlight=False)
            for key, title in (("by_version", "version"), ("by_device_class", "device class")):
                rows = [{"key": k, **v} for k, v in (d.get(key) or {}).items()]
                render_table(self.console, f"accuracy by {title}", rows,
                             [(title, "key"), ("n", "n"), ("correct", "correct"), ("accuracy", "accuracy")])
        self.emit(self.client.accuracy(a.name), human)

    def model_variants(self, a: argparse.Namespace) -> None:
        version = a.version or self._latest_version(a.name)
        self.emit(self.client.variants(a.name, version), lambda d: self._variants_table(d, a.name, version))

    def _variants_table(self, d: Any, name: str, version: int) -> None:
        render_table(self.console, f"variants of {name} v{version}", _items(d, "variants"),
                     [("variant", "name"), ("status", "status"), ("format", "format"), ("classes", "device_classes"),
                      ("size", "size"), ("size x ref", "report.size.raw_ratio"),
                      ("min cosine", "report.validation.outputs"), ("p50 ms", "report.latency.p50_ms"),
                      ("x ref p50", "report.latency.ratio"), ("why not", "report.reason")],
                     {"report.validation.outputs": _min_cosine, "device_classes": _joined,
                      "report.reason": lambda v: "-" if v is None else str(v)}, wrap=("why not",))
        deltas = _items(d, "deltas")
        if deltas:
            render_table(self.console, f"deltas into {name} v{version} (a manifest sends the chosen one)", deltas,
                         [("from", "from_sha256"), ("to variant", "to_variant"), ("algorithm", "algorithm"),
                          ("bytes", "size"), ("x full", "ratio"), ("chosen", "chosen")],
                         {"from_sha256": _short_sha, "chosen": lambda v: "yes" if v else ""})

    def _latest_version(self, name: str) -> int:
        versions = _items(self.client.model(name), "versions")
        if not versions:
            raise EdgefleetError(f"model {name} has no versions")
        return max(int(v["version"]) for v in versions)

    def model_optimize(self, a: argparse.Namespace) -> None:
        version = a.version or self._latest_version(a.name)
        job = self.client.optimize(a.name, version, a.target)
        if a.wait:
            job = self._follow_job(job)
            if job.get("state") != "succeeded":
                reason = job.get("message") or "no reason given"
                raise EdgefleetError(f"job {job.get('id')} {job.get('state')}: {reason}")
            variants = self.client.variants(a.name, version)
            self.emit({"job": job, "variants": _items(variants, "variants")},
                      lambda d: self._variants_table(d, a.name, version))
            return
        self.emit(job, lambda j: self.console.print(
            f"job {fmt(j.get('id'))}: {fmt(j.get('state'))} (follow it with --wait, or "
            f"`edgefleet model variants {a.name} {version}`)"))

    def _follow_job(self, job: dict[str, Any]) -> dict[str, Any]:
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeElapsedColumn())
        quiet = self.as_json or not self.progress_console.is_terminal
        with Progress(*columns, console=self.progress_console, disable=quiet) as progress:
            bar = progress.add_task(f"job {job.get('id')}", total=1.0)
            while job.get("state") not in JOB_DONE:
                time.sleep(self.poll_s)
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
        for key, value in (("latency_alpha", a.gate_alpha), ("latency_min_devices", a.gate_min_devices),
                           ("latency_min_samples", a.gate_min_samples), ("latency_warmup_s", a.gate_warmup)):
            if value is not None:  # else the server's default (docs/rollouts.md)
                gates[key] = value
        body = {"model": a.name, "version": a.version, "target": target, "waves": waves,
                "gates": gates, "priority": a.priority, "auto_revert": a.auto_revert, "push": a.push}
        if a.shadow_agreement is not None or a.shadow_latency_ms is not None:
            body["shadow"] = {"sample_fraction": a.shadow_fraction, "cpu_budget_pct": a.shadow_cpu,
                              "min_samples": a.shadow_samples, "min_agreement": a.shadow_agreement,
                              "max_latency_ms": a.shadow_latency_ms}
        self.emit(self.client.create_rollout(body), self._show_rollout)

    def rollout_list(self, a: argparse.Namespace) -> None:
        self.emit(self.client.rollouts(), lambda d: render_table(
            self.console, "rollouts", _items(d, "rollouts"),
            [("id", "id"), ("model", "model"), ("version", "version"), ("state", "state"),
             ("wave", "current_wave"), ("committed", "waves"), ("priority", "priority"), ("reason", "reason")],
            {"current_wave": lambda v: fmt(v + 1 if isinstance(v, int) else v), "waves": _committed}))

    def _show_rollout(self, d: Any) -> None:
        reason = f" ({d.get('reason')})" if d.get("reason") else ""
        self.console.print(f"rollout [bold]{d.get('id')}[/]: {d.get('model')} v{d.get('version')} "
                           f"priority {d.get('priority')} [bold]{d.get('state')}[/]{reason}", highlight=False)
        gates = d.get("gates") or {}
        self.console.print("gates: " + ", ".join(f"{k} {fmt(v)}" for k, v in gates.items()), highlight=False)
        self.console.print(f"progress {_progress_bar(d)} {_committed(d.get('waves'))} committed", highlight=False)
        render_table(self.console, "waves", _items(d, "waves"),
                     [("wave", "index"), ("devices", "devices"), ("committed", "committed"),
                      ("in flight", "in_flight"), ("failed", "failed"), ("superseded", "superseded"),
                      ("state", "state")], {"index": lambda v: fmt(v + 1 if isinstance(v, int) else v)})
        devices = _items(d, "devices")
        if devices:
            render_table(self.console, "devices", devices,
                         [("device", "device_id"), ("wave", "wave"), ("state", "state"), ("reason", "reason")],
                         {"wave": lambda v: fmt(v + 1 if isinstance(v, int) else v)})
        transfers = _items(d, "transfers")
        if transfers:
            render_table(self.console, "what travels (per kind of device)", transfers,
                         [("from", "from_sha256"), ("devices", "devices"), ("option", "option"),
                          ("variant", "variant"), ("bytes", "bytes"), ("x full", "ratio")],
                         {"from_sha256": _short_sha})
        for conflict in _items(d, "conflicts"):
            self.console.print(f"conflict: {conflict.get('device_id')}: {conflict.get('reason')}", highlight=False)

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
            [("device", "device_id"), ("status", "online"), ("class", "device_class"),
             ("model", "model_name"), ("version", "model_version"), ("runtime", "runtime"),
             ("delegate", "delegate"), ("p95 ms", "p95_ms"), ("update", "update_state"),
             ("drift", "drift"), ("last seen", "last_seen")],
            {"last_seen": ago, "online": _online, "p95_ms": _ms, "drift": _drift}))

    def device_show(self, a: argparse.Namespace) -> None:
        def human(d: Any) -> None:
            desired = d.get("desired") or {}
            facts = [
                ("device", d.get("device_id")), ("status", _online(d.get("online"))),
                ("class", d.get("device_class")), ("tags", ", ".join(d.get("tags") or []) or None),
                ("agent", d.get("agent_version")),
                ("model", f"{d.get('model_name')} v{d.get('model_version')}" if d.get("model_name") else None),
                ("sha256", d.get("model_sha256")), ("runtime", d.get("runtime")), ("delegate", d.get("delegate")),
                ("p95 latency", _ms(d.get("p95_ms"))), ("cpu", _pct(d.get("cpu_pct"))),
                ("last seen", ago(d.get("last_seen"))), ("update", d.get("update_state")),
                ("update reason", d.get("update_reason")),
                ("desired", f"version id {desired.get('version_id')} by rollout {desired.get('rollout_id')}"
                 + (" (revert)" if desired.get("revert") else "") if desired else None),
                ("hw", json.dumps(d.get("hw") or {}, separators=(",", ":"))[:200]),
                ("enrollment", d.get("enrollment")),
                ("refused msgs", dig(d, "ingest.rejected")), ("last refusal", dig(d, "ingest.last_reason")),
            ]
            for key, value in facts:
                self.console.print(f"{key:>14}: {fmt(value)}", highlight=False, soft_wrap=True)
        self.emit(self.client.device(a.id), human)

    def device_pending(self, a: argparse.Namespace) -> None:
        self.emit(self.client.devices(enrollment="pending"), lambda d: render_table(
            self.console, "waiting for approval", _items(d, "devices"),
            [("device", "device_id"), ("class", "device_class"), ("tags", "tags"), ("asked", "pending_since")],
            {"pending_since": ago, "tags": _joined}))

    def device_enrollment(self, a: argparse.Namespace) -> None:
        """reset | approve: the enrollment state the server answers with."""
        call = self.client.device_reset if a.action == "reset" else self.client.device_approve
        done = "reset: it may enroll again with the shared token" if a.action == "reset" else "approved"
        self.emit(call(a.id), lambda d: self.console.print(
            f"{a.id} {done} (enrollment: {fmt(dig(d, 'enrollment'))})", highlight=False))

    def device_enroll_token(self, a: argparse.Namespace) -> None:
        def human(d: Any) -> None:
            until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(d["expires_at"])))
            self.console.print(f"one-time enrollment token for {a.id} (valid once, until {until}):", highlight=False)
            print(d["enrollment_token"])
        self.emit(self.client.enrollment_token(a.id, a.ttl_h), human)

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
            if not rows:
                self.console.print(f"no telemetry from {a.id} yet", highlight=False)
                return
            render_table(self.console, f"telemetry of {a.id} (last {min(a.show, len(rows))} of {len(rows)})",
                         rows[-a.show:],
                         [("seq", "seq"), ("time", "ts"), ("model", "model_version"), ("count", "count"),
                          ("errors", "errors"), ("p50 ms", "p50_ms"), ("p95 ms", "p95_ms"), ("fps", "fps"),
                          ("cpu %", "cpu_pct"), ("rss MB", "rss_mb")], {"ts": ago})
            for label, key in (("p95 ms", "p95_ms"), ("cpu %", "cpu_pct")):
                values = [r.get(key) for r in rows]
                present = [v for v in values if v is not None]
                span = f"  {fmt(min(present))} .. {fmt(max(present))}" if present else ""
                self.console.print(f"{label:<7}{sparkline(values)}{span}", highlight=False)
        self.emit(self.client.telemetry(a.id, a.limit), human)


def _online(value: Any) -> str:
    return "online" if value else "offline"


def _drift(value: Any) -> str:
    if not isinstance(value, dict) or value.get("max_psi") is None:
        return "-"
    text = f"{value.get('max_stat') or ''} {float(value['max_psi']):.2f}".strip()
    if not value.get("ready"):
        return f"({text})"
    return f"⚑ {text}" if value.get("drifted") else "ok"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f} %"


def _joined(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else fmt(value)


def _min_cosine(outputs: Any) -> str:
    if not isinstance(outputs, dict):
        return "-"
    cosines = [float(o["cosine"]) for o in outputs.values() if isinstance(o, dict) and o.get("cosine") is not None]
    return f"{min(cosines):.4f}" if cosines else "-"


def _committed(waves: Any) -> str:
    if not isinstance(waves, list):
        return "-"
    done = sum(int(w.get("committed") or 0) for w in waves if isinstance(w, dict))
    total = sum(int(w.get("devices") or 0) for w in waves if isinstance(w, dict))
    return f"{done}/{total}"


def _progress_bar(rollout: Any, width: int = 30) -> str:
    waves = rollout.get("waves") or []
    total = sum(int(w.get("devices") or 0) for w in waves) or 1
    done = sum(int(w.get("committed") or 0) for w in waves)
    filled = round(width * done / total)
    return "[" + "█" * filled + "░" * (width - filled) + "]"


EXIT_CODES = "\n".join(f"  {code.value:>3}  {text}" for code, text in (
    (ExitCode.OK, "success"), (ExitCode.ERROR, "anything else (a failed job, a file that cannot be read)"),
    (ExitCode.USAGE, "bad arguments, an unreadable token file"), (ExitCode.NOT_FOUND, "not found (HTTP 404)"),
    (ExitCode.AUTH, "no or wrong token (HTTP 401/403)"),
    (ExitCode.CONFLICT, "conflict (HTTP 409): the same file again, an action the rollout's state forbids"),
    (ExitCode.INVALID, "refused as invalid (HTTP 400/413/415/422)"),
    (ExitCode.UNREACHABLE, "the server cannot be reached (refused, unknown host, timeout, TLS)"),
    (ExitCode.SERVER, "server error (HTTP 5xx) or not an edgefleet server"), (ExitCode.INTERRUPTED, "interrupted")))
DEFAULT_URL = "http://127.0.0.1:8080"


class UsageError(EdgefleetError):
    """A local mistake of the caller: exit 2."""


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="edgefleet", description=doc.split("\n\n")[0].replace("\n", " "),
        epilog=doc.split("\n\n", 1)[1].strip() + "\n\nexit codes:\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_line("edgefleet"),
                        help="print the version and exit")
    parser.add_argument("--server", default=os.environ.get("EDGEFLEET_URL", DEFAULT_URL), metavar="URL",
                        help=f"server URL (default: EDGEFLEET_URL, else {DEFAULT_URL})")
    parser.add_argument("--token-file", metavar="FILE",
                        help="read the admin token from FILE ('-': standard input); default: EDGEFLEET_ADMIN_TOKEN, "
                             "else the file EDGEFLEET_ADMIN_TOKEN_FILE names")
    parser.add_argument("--token", help="deprecated: every user sees it in ps; set EDGEFLEET_ADMIN_TOKEN or pass "
                                        "--token-file")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    # --json is accepted after any sub-command too (`edgefleet model list --json`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")

    def command_parser(group: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if "help" in kwargs and "description" not in kwargs:
            kwargs["description"] = kwargs["help"]
        parser: argparse.ArgumentParser = group.add_parser(name, parents=[common], **kwargs)
        return parser

    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    model = command_parser(groups, "model", help="models, versions and variants").add_subparsers(
        dest="cmd", required=True, metavar="COMMAND")
    push = command_parser(model, "push", help="upload a new version of a model")
    push.add_argument("name", help="model name")
    push.add_argument("file", help="model file (.onnx, .tflite, TorchScript .pt)")
    push.add_argument("--labels", metavar="FILE", help="class labels, one per line")
    push.add_argument("--task", choices=["classification", "detection", "other"], help="what the model does")
    push.add_argument("--preprocess", metavar="JSON", help="pre-processing spec as JSON")
    push.add_argument("--calibration", metavar="NPZ",
                      help=".npz of sample inputs by input name (sample axis first), for quantization and "
                           "validation; checked against the model's inputs at push")
    push.add_argument("--force", action="store_true",
                      help="make a new version even when this model already has a version of the same file")
    push.set_defaults(run=Commands.model_push)
    command_parser(model, "list", help="the models and their latest version").set_defaults(run=Commands.model_list)
    show = command_parser(model, "show", help="a model and its versions")
    show.add_argument("name", help="model name")
    show.set_defaults(run=Commands.model_show)
    variants = command_parser(model, "variants", help="the optimized variants of a version")
    variants.add_argument("name", help="model name")
    variants.add_argument("version", type=int, nargs="?", help="default: the latest")
    variants.set_defaults(run=Commands.model_variants)
    drift = command_parser(model, "drift", help="drift of a version's devices against its reference profile")
    drift.add_argument("name", help="model name")
    drift.add_argument("version", type=int, nargs="?", help="default: the latest")
    drift.set_defaults(run=Commands.model_drift)
    accuracy = command_parser(model, "accuracy", help="accuracy on labelled samples by version and device class")
    accuracy.add_argument("name", nargs="?", help="model name (default: every model)")
    accuracy.set_defaults(run=Commands.model_accuracy)
    optimize = command_parser(model, "optimize", help="make optimized variants for a device class")
    optimize.add_argument("name", help="model name")
    optimize.add_argument("version", type=int, nargs="?", help="default: the latest")
    optimize.add_argument("--target", required=True, metavar="CLASS",
                          help="device class to optimize for (cpu, rpi4, jetson, edgetpu, ...)")
    optimize.add_argument("--wait", action="store_true",
                          help="follow the job (progress bar on stderr), then list the variants")
    optimize.set_defaults(run=Commands.model_optimize)

    rollout = command_parser(groups, "rollout", help="gated fleet rollouts").add_subparsers(
        dest="cmd", required=True, metavar="COMMAND")
    create = command_parser(rollout, "create", help="roll a version out to a target in gated waves")
    create.add_argument("name", help="model name")
    create.add_argument("version", type=int, help="version to roll out")
    create.add_argument("--devices", metavar="IDS", help="target: comma-separated device ids")
    create.add_argument("--tags", help="target: devices with any of these comma-separated tags")
    create.add_argument("--class", dest="device_class", metavar="CLASS", help="target: devices of this class")
    create.add_argument("--waves", default="1,10,50,100", metavar="PCTS",
                        help="cumulative percent of the target per wave (default: %(default)s)")
    create.add_argument("--counts", metavar="NS", help="cumulative device counts per wave, instead of --waves")
    create.add_argument("--min-committed", type=float, default=0.9, metavar="RATIO",
                        help="gate: share of a wave that must commit (default: %(default)s)")
    create.add_argument("--max-failure", type=float, default=0.1, metavar="RATIO",
                        help="gate: most share of a wave rolled back or rejected (default: %(default)s)")
    create.add_argument("--max-p95-regression", type=float, default=1.5, metavar="RATIO",
                        help="gate: most p95 latency against the previous version (default: %(default)s)")
    create.add_argument("--soak", type=float, default=30.0, metavar="S",
                        help="seconds each wave must stay healthy (default: %(default)s)")
    create.add_argument("--gate-alpha", type=float, metavar="P",
                        help="latency gate: significance level of the slowdown test (server default 0.01)")
    create.add_argument("--gate-min-devices", type=int, metavar="N",
                        help="latency gate: devices needed on each side of the comparison (server default 3)")
    create.add_argument("--gate-min-samples", type=int, metavar="N",
                        help="latency gate: telemetry messages needed per device and window (server default 3)")
    create.add_argument("--gate-warmup", type=float, metavar="S",
                        help="latency gate: seconds after a commit left out (server default 10)")
    create.add_argument("--priority", type=int, default=0, help="a higher priority wins a device two rollouts want")
    create.add_argument("--auto-revert", action="store_true", help="send devices back when a gate breaks")
    create.add_argument("--push", action=argparse.BooleanOptionalAction, default=True,
                        help="tell a wave's devices over MQTT to check in when it starts; --no-push: they learn "
                             "at their next poll")
    create.add_argument("--shadow-agreement", type=float, metavar="RATIO",
                        help="shadow the candidate first; min agreement to swap")
    create.add_argument("--shadow-latency-ms", type=float, metavar="MS",
                        help="shadow first; max candidate p95 on the device")
    create.add_argument("--shadow-fraction", type=float, default=0.1, metavar="RATIO",
                        help="share of live inputs shadowed (default: %(default)s)")
    create.add_argument("--shadow-cpu", type=float, default=20.0, metavar="PCT",
                        help="CPU budget of the shadow, percent (default: %(default)s)")
    create.add_argument("--shadow-samples", type=int, default=50, metavar="N",
                        help="shadowed inputs before a verdict (default: %(default)s)")
    create.set_defaults(run=Commands.rollout_create)
    command_parser(rollout, "list", help="rollouts and their progress").set_defaults(run=Commands.rollout_list)
    status = command_parser(rollout, "status", help="a rollout's waves and devices")
    status.add_argument("id", type=int, help="rollout id")
    status.add_argument("--watch", action="store_true", help="refresh until the rollout completes or is aborted")
    status.add_argument("--interval", type=float, default=2.0, metavar="S",
                        help="seconds between refreshes (default: %(default)s)")
    status.set_defaults(run=Commands.rollout_status)
    for action, text in (("pause", "stop starting new waves"), ("resume", "continue a paused rollout"),
                         ("abort", "stop the rollout for good")):
        sub = command_parser(rollout, action, help=text)
        sub.add_argument("id", type=int, help="rollout id")
        if action == "abort":
            sub.add_argument("--revert", action="store_true", help="send updated devices back")
        sub.set_defaults(run=Commands.rollout_action, action=action)

    device = command_parser(groups, "devices", help="the fleet (alone: list it)").add_subparsers(
        dest="cmd", metavar="COMMAND")
    command_parser(device, "list", help="every device, its model, latency and update state").set_defaults(
        run=Commands.device_list)
    dshow = command_parser(device, "show", help="one device in detail")
    dshow.add_argument("id", help="device id")
    dshow.set_defaults(run=Commands.device_show)
    command_parser(device, "pending", help="devices waiting for approval (enrollment.mode: approve)") \
        .set_defaults(run=Commands.device_pending)
    for action, text in (("reset", "revoke its token: the id may enroll again with the shared token"),
                         ("approve", "let a device waiting for approval in")):
        sub = command_parser(device, action, help=text)
        sub.add_argument("id", help="device id")
        sub.set_defaults(run=Commands.device_enrollment, action=action)
    enroll_token = command_parser(device, "enroll-token", help="a one-time enrollment token for one id")
    enroll_token.add_argument("id", help="the device id the token enrolls")
    enroll_token.add_argument("--ttl-h", type=float, help="hours it stays valid (server default 72)")
    enroll_token.set_defaults(run=Commands.device_enroll_token)
    command = command_parser(device, "command", help="send a command over MQTT")
    command.add_argument("id", help="device id")
    command.add_argument("type", help="command type (check_update, upload_samples, ...)")
    command.add_argument("--arg", action="append", metavar="KEY=VALUE",
                         help="command argument (VALUE parsed as JSON when it can be; repeatable)")
    command.set_defaults(run=Commands.device_command)

    telemetry = command_parser(groups, "telemetry", help="telemetry of one device")
    telemetry.add_argument("id", help="device id")
    telemetry.add_argument("--limit", type=int, default=200, metavar="N",
                           help="rows to fetch (default: %(default)s)")
    telemetry.add_argument("--show", type=int, default=15, metavar="N", help="rows in the table (default: %(default)s)")
    telemetry.set_defaults(run=Commands.telemetry)
    return parser


def read_token(args: argparse.Namespace, environ: Any = os.environ) -> str | None:
    """--token-file, else EDGEFLEET_ADMIN_TOKEN, else EDGEFLEET_ADMIN_TOKEN_FILE; --token last (it warns)."""
    path = args.token_file or (None if environ.get("EDGEFLEET_ADMIN_TOKEN") else
                               environ.get("EDGEFLEET_ADMIN_TOKEN_FILE"))
    if args.token is not None:
        print("edgefleet: warning: --token is visible to every user of this machine (ps); "
              "set EDGEFLEET_ADMIN_TOKEN or pass --token-file", file=sys.stderr)
        if not args.token_file:
            return str(args.token)
    if path:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
        token = text.strip()
        if not token:
            raise UsageError(f"the token file {path} is empty")
        return token
    return environ.get("EDGEFLEET_ADMIN_TOKEN") or None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        import argcomplete

        argcomplete.autocomplete(parser)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):  # `edgefleet devices` alone lists them
        args.run = Commands.device_list
    # not a terminal: no colours, and wide enough that tables are not cut (COLUMNS still wins)
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    try:
        commands = Commands(ServerClient(args.server, read_token(args)), Console(width=width), args.json)
        args.run(commands, args)
    except (EdgefleetError, ValueError) as exc:
        message = " ".join(str(exc).split()) or exc.__class__.__name__
        print(f"edgefleet: {message}", file=sys.stderr)
        if isinstance(exc, ApiError):
            return int(exc.code)
        return int(ExitCode.USAGE if isinstance(exc, UsageError | ValueError) else ExitCode.ERROR)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
