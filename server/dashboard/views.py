"""The two pages as markup, from plain documents (``device_public``, ``rollout_public``, telemetry rows)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.server.dashboard.charts import Series, bar, line_chart
from edgefleet.server.dashboard.render import ago, clock, device_href, drift_flag, e, num, pill


@dataclass
class Overview:
    online: int
    offline: int
    versions: list[tuple[str, int | None, int, int]]  # model, version, devices, online
    rollouts: list[dict[str, Any]]  # rollout_public(with_devices=False)
    devices: list[dict[str, Any]]  # device_public
    drift: dict[str, Any] = field(default_factory=dict)
    shown_limit: int = 500
    query: str = ""
    total_matching: int = 0
    # (model, version) -> merged figures of the last hour (server.latency.summary): count, p50_ms .. p99_ms
    version_latency: dict[tuple[str, int | None], dict[str, Any]] = field(default_factory=dict)


@dataclass
class DevicePage:
    device: dict[str, Any]
    telemetry: list[dict[str, Any]]  # telemetry_public, oldest first
    events: list[dict[str, Any]]  # event_public, newest first
    rollouts: list[dict[str, Any]]  # {id, model, version, rollout_state, state, wave, reason}
    desired: str | None = None  # "model vN" of the desired state


def _card(label: str, value: Any, extra: str = "") -> str:
    return f'<div class="card"><div class="n">{e(value)}{extra}</div><div class="l">{e(label)}</div></div>'


def _wave_bars(rollout: dict[str, Any]) -> str:
    cells = []
    for wave in rollout.get("waves", []):
        size = max(1, int(wave.get("devices") or wave.get("size") or 1))
        committed, failed, flight = (int(wave.get(k) or 0) for k in ("committed", "failed", "in_flight"))
        title = f"wave {wave['index'] + 1}: {committed}/{size} committed, {flight} in flight, {failed} failed"
        svg = bar([(committed / size, "ok"), (flight / size, "flight"), (failed / size, "bad")], width=90,
                  title=title)
        cells.append(f'<span class="wave">{svg}'
                     f'<span>w{wave["index"] + 1} {committed}/{size} {e(wave.get("state"))}</span></span>')
    return "".join(cells)


def _rollouts(rollouts: Sequence[dict[str, Any]]) -> str:
    if not rollouts:
        return '<p class="muted">No rollouts in progress.</p>'
    rows = []
    for r in rollouts:
        total = sum(int(w.get("devices") or 0) for w in r.get("waves", [])) or 1
        committed = sum(int(w.get("committed") or 0) for w in r.get("waves", []))
        rows.append(
            f'<tr data-rollout="{e(r["id"])}"><td class="num">{e(r["id"])}</td><td>{e(r.get("model"))} '
            f'v{e(r.get("version"))}<br><span class="muted">priority {e(r.get("priority"))}</span></td>'
            f'<td>{pill(r.get("state"))}</td>'
            f'<td>{_wave_bars(r)}</td><td class="num">{committed}/{total}</td>'
            f'<td class="wrap">{e(r.get("reason") or "")}</td></tr>')
    return ("<table><thead><tr><th>id</th><th>model</th><th>state</th><th>waves</th>"
            f"<th>committed</th><th>reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _versions(versions: Sequence[tuple[str, int | None, int, int]],
              latency: dict[tuple[str, int | None], dict[str, Any]] | None = None) -> str:
    latency = latency or {}
    if not versions:
        return '<p class="muted">No device has reported a model yet.</p>'
    by_model: dict[str, list[tuple[int | None, int, int]]] = {}
    for model, version, count, online in versions:
        by_model.setdefault(model, []).append((version, count, online))
    rows = []
    for model, entries in by_model.items():
        total = sum(c for _, c, _ in entries) or 1
        for version, count, online in sorted(entries, key=lambda x: -1 if x[0] is None else x[0], reverse=True):
            figures = latency.get((model, version)) or {}
            p95 = figures.get("p95_ms")
            timed = f' title="{e(figures.get("count"))} inferences merged"' if p95 is not None else ""
            rows.append(f'<tr data-model="{e(model)}" data-version="{e(version)}"><td>{e(model)}</td>'
                        f'<td class="num">v{e(version if version is not None else "?")}</td>'
                        f'<td class="num">{count}</td><td class="num">{online}</td>'
                        f'<td class="num" data-fleet-p95="{e(p95 if p95 is not None else "")}"{timed}>'
                        f'{num(p95, 2)}</td>'
                        f'<td>{bar([(count / total, "field")], width=110)} {100 * count / total:.0f}%</td></tr>')
    return ("<table><thead><tr><th>model</th><th>version</th><th>devices</th><th>online</th>"
            '<th title="p95 of every device\'s latencies of the last hour, merged (2 %)">fleet p95 ms</th>'
            f"<th>share</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _device_rows(devices: Sequence[dict[str, Any]], drift: dict[str, Any], now: float) -> str:
    rows = []
    for d in devices:
        flagged, drift_text = drift_flag(drift.get(d["device_id"]))
        model = f'{e(d.get("model_name"))} v{e(d.get("model_version"))}' if d.get("model_name") else "-"
        runtime = e(d.get("runtime") or "-") + (f' / {e(d["delegate"])}' if d.get("delegate") else "")
        online = '<span class="dot on"></span>online' if d.get("online") else '<span class="dot off"></span>offline'
        drift_cell = (f'<span class="flag">⚑ {e(drift_text)}</span>' if flagged else e(drift_text or "-"))
        rows.append(
            f'<tr data-device="{e(d["device_id"])}"><td class="id" title="{e(d["device_id"])}">'
            f'<a href="{e(device_href(d["device_id"]))}">{e(d["device_id"])}</a></td><td>{online}</td>'
            f'<td>{e(d.get("device_class") or "-")}</td>'
            f'<td>{model}</td><td>{runtime}</td><td class="num">{num(d.get("p95_ms"), 2)}</td>'
            f'<td>{pill(d.get("update_state")) if d.get("update_state") else "-"}</td>'
            f'<td>{e(ago(d.get("last_seen"), now))}</td><td>{drift_cell}</td></tr>')
    return "".join(rows)


def render_overview(data: Overview) -> str:
    now = time.time()
    total = data.online + data.offline
    running = sum(r.get("state") == "running" for r in data.rollouts)
    paused = sum(r.get("state") == "paused" for r in data.rollouts)
    cards = "".join([
        _card("devices", total), _card("online", data.online, '<span class="dot on"></span>'),
        _card("offline", data.offline), _card("models in the field", len({v[0] for v in data.versions})),
        _card("rollouts running", running), _card("rollouts paused", paused)])
    shown = len(data.devices)
    more = (f'<p class="muted">Showing {shown} of {data.total_matching} devices; narrow the filter.</p>'
            if data.total_matching > shown else "")
    table = ("<table><thead><tr><th>device</th><th>status</th><th>class</th><th>model</th><th>runtime / delegate</th>"
             "<th>p95 ms</th><th>update</th><th>last seen</th><th>drift</th></tr></thead>"
             f"<tbody>{_device_rows(data.devices, data.drift, now)}</tbody></table>") if data.devices else \
        '<p class="muted">No devices match.</p>'
    return (f'<h1>Fleet overview</h1><div class="cards" id="counts" data-online="{data.online}" '
            f'data-offline="{data.offline}">{cards}</div>'
            f'<div class="top"><section class="panel" id="versions"><h2>Versions in the field</h2>'
            f'{_versions(data.versions, data.version_latency)}</section>'
            f'<section class="panel" id="rollouts"><h2>Rollouts</h2>{_rollouts(data.rollouts)}</section></div>'
            f'<section class="panel" id="devices"><h2>Devices</h2><form class="filter" method="get" action="/">'
            f'<input name="q" placeholder="filter by id, class, model" value="{e(data.query)}"> '
            f'<button type="submit">Filter</button></form>{more}{table}</section>')


def _event_detail(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    rest = {k: v for k, v in payload.items() if k not in ("seq", "ts", "type")}
    return json.dumps(rest, separators=(", ", ": "), default=str)[:300]


def render_device(data: DevicePage) -> str:
    d, now = data.device, time.time()
    rows = data.telemetry
    p50 = Series("p50", "p50", [(r["ts"], r.get("p50_ms")) for r in rows])
    p95 = Series("p95", "p95", [(r["ts"], r.get("p95_ms")) for r in rows])
    cpu = Series("cpu %", "cpu", [(r["ts"], r.get("cpu_pct")) for r in rows])
    latency_chart = line_chart([p50, p95], title="inference latency", unit="ms")
    cpu_chart = line_chart([cpu], title="CPU", unit="%", y_floor=10.0)
    status = ('<span class="dot on"></span>online' if d.get("online") else '<span class="dot off"></span>offline')
    latest = rows[-1] if rows else {}
    flagged, drift_text = drift_flag((latest.get("payload") or {}).get("drift"))
    facts = [
        ("status", status), ("class", e(d.get("device_class") or "-")),
        ("tags", e(", ".join(d.get("tags") or []) or "-")), ("agent", e(d.get("agent_version") or "-")),
        ("model", (f'{e(d.get("model_name"))} v{e(d.get("model_version"))} '
                   f'<code>{e((d.get("model_sha256") or "")[:12])}</code>') if d.get("model_name") else "-"),
        ("runtime", e(d.get("runtime") or "-") + (f' / {e(d["delegate"])}' if d.get("delegate") else "")),
        ("p95 latency", num(d.get("p95_ms"), 2, " ms")), ("CPU", num(d.get("cpu_pct"), 1, " %")),
        ("last seen", f'{e(ago(d.get("last_seen"), now))} <span class="muted">{e(clock(d.get("last_seen")))}</span>'),
        ("enrolled", e(clock(d.get("enrolled_at")))),
        ("drift", (f'<span class="flag">⚑ {e(drift_text)}</span>' if flagged else e(drift_text or "-"))),
    ]
    update = [
        ("update state", pill(d.get("update_state")) if d.get("update_state") else "-"),
        ("reason", e(d.get("update_reason") or "-")),
        ("desired", e(data.desired or "none")
         + (" (revert)" if (d.get("desired") or {}).get("revert") else "")),
        ("desired by rollout", e((d.get("desired") or {}).get("rollout_id") or "-")),
    ]
    kv = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    kv_update = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in update)
    rollout_rows = "".join(
        f'<tr><td class="num">{e(r["id"])}</td><td>{e(r["model"])} v{e(r["version"])}</td>'
        f'<td>{pill(r["rollout_state"])}</td><td class="num">{e(int(r["wave"]) + 1)}</td><td>{pill(r["state"])}</td>'
        f'<td class="wrap">{e(r.get("reason") or "")}</td></tr>' for r in data.rollouts)
    rollouts = ("<table><thead><tr><th>rollout</th><th>model</th><th>rollout state</th><th>wave</th>"
                f"<th>device state</th><th>reason</th></tr></thead><tbody>{rollout_rows}</tbody></table>"
                if data.rollouts else '<p class="muted">Not part of any rollout.</p>')
    event_rows = "".join(
        f'<tr><td class="num">{e(ev["seq"])}</td><td>{e(clock(ev["ts"]))}</td><td>{pill(ev["type"])}</td>'
        f'<td class="wrap mono">{e(_event_detail(ev.get("payload")))}</td></tr>' for ev in data.events)
    events = ("<table><thead><tr><th>seq</th><th>time (UTC)</th><th>type</th><th>details</th></tr></thead>"
              f"<tbody>{event_rows}</tbody></table>" if data.events else '<p class="muted">No events.</p>')
    last = (f'<p class="muted">{len(rows)} samples, last seq {e(latest.get("seq"))}: p50 '
            f'{num(latest.get("p50_ms"), 2)} ms, p95 {num(latest.get("p95_ms"), 2)} ms, '
            f'CPU {num(latest.get("cpu_pct"), 1)} %, {num(latest.get("fps"), 1)} fps</p>') if rows else ""
    return (f'<h1 id="device" data-device="{e(d["device_id"])}">{e(d["device_id"])}</h1>'
            f'<div class="grid2"><section class="panel"><h2>Device</h2><dl class="kv">{kv}</dl></section>'
            f'<section class="panel"><h2>Update</h2><dl class="kv">{kv_update}</dl><h2 style="margin-top:14px">'
            f'Rollouts</h2>{rollouts}</section></div>'
            f'<section class="panel" id="charts"><h2>Telemetry</h2>{last}<div class="grid2"><div>{latency_chart}</div>'
            f'<div>{cpu_chart}</div></div></section>'
            f'<section class="panel" id="events"><h2>Recent events</h2>{events}</section>')


def render_login(*, next_path: str, error: str | None = None, configured: bool = True) -> str:
    message = f'<p class="error">{e(error)}</p>' if error else ""
    if not configured:
        message = '<p class="error">This server has no admin token configured: the dashboard is closed.</p>'
    return (f'<div class="login panel"><h1>Sign in</h1><p class="muted">Paste the server\'s admin token '
            f'(<code>admin_token</code> in server.yaml).</p>{message}'
            f'<form method="post" action="/login"><input type="hidden" name="next" value="{e(next_path)}">'
            f'<input type="password" name="token" autocomplete="current-password" placeholder="admin token" '
            f'autofocus><button type="submit">Sign in</button></form></div>')
