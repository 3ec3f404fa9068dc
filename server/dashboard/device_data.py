"""Markup for enrollment and ingestion health: the device page's panel and the overview's approval queue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgefleet.server.dashboard.render import clock, device_href, e, pill


def _button(device_id: str, action: str, label: str, csrf: str) -> str:
    return (f'<form method="post" action="{e(device_href(device_id))}/{action}" class="inline">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}"><button type="submit" class="{action}">'
            f'{e(label)}</button></form>')


def _epoch_created(epoch: Any) -> str:
    """Agent epochs are creation ms x 1000 plus three random digits; anything else shows as a number."""
    if isinstance(epoch, int) and 10**15 <= epoch < 10**17:
        return clock(epoch / 1_000_000)
    return "-"


def render_device_data(d: dict[str, Any], epochs: Sequence[dict[str, Any]], csrf: str) -> str:
    state = str(d.get("enrollment") or "unenrolled")
    ingest = d.get("ingest") or {}
    buttons = ""
    if state == "pending":
        buttons += _button(d["device_id"], "approve", "Approve", csrf)
    if state in ("enrolled", "pending"):
        buttons += _button(d["device_id"], "reset", "Reset enrollment", csrf)
    notes = {"pending": " waiting for approval since " + clock(d.get("pending_since")),
             "unenrolled": " — nothing it sends is stored until it enrolls again"}
    note = notes.get(state, "")
    rejected = int(ingest.get("rejected") or 0)
    last = (f'<span class="flag">{e(ingest.get("last_reason"))}</span> '
            f'<span class="muted">{e(clock(ingest.get("last_rejected_at")))}</span>') if rejected else "-"
    facts = [("enrollment", f"{pill(state)}{e(note)}"), ("refused messages", e(rejected)), ("last refusal", last),
             ("timestamps replaced", e(int(ingest.get("ts_replaced") or 0))),
             ("status epoch / session", f'{e(d.get("epoch"))} / {e(d.get("session"))}')]
    kv = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    rows = "".join(
        f'<tr><td class="num mono">{e(ep["epoch"])}</td><td>{e(_epoch_created(ep["epoch"]))}</td>'
        f'<td class="num">{e(ep["messages"])}</td><td class="num">{e(ep["first_seq"])}..{e(ep["last_seq"])}</td>'
        f'<td class="num">{e(ep["missing"])}</td><td>{e(clock(ep.get("last_received")))}</td></tr>'
        for ep in epochs)
    table = ("<table><thead><tr><th>epoch</th><th>spool created (UTC)</th><th>messages</th><th>seq</th>"
             f"<th>missing</th><th>last received</th></tr></thead><tbody>{rows}</tbody></table>" if epochs
             else '<p class="muted">No stored telemetry.</p>')
    return (f'<section class="panel" id="ingest"><h2>Enrollment and ingestion</h2><dl class="kv">{kv}</dl>'
            f'<p>{buttons}</p><h2 style="margin-top:14px">Messages per epoch (telemetry and events, raw window)'
            f'</h2>{table}</section>')


def render_pending(devices: Sequence[dict[str, Any]], csrf: str) -> str:
    if not devices:
        return ""
    rows = "".join(
        f'<tr><td class="id"><a href="{e(device_href(d["device_id"]))}">{e(d["device_id"])}</a></td>'
        f'<td>{e(d.get("device_class") or "-")}</td><td>{e(", ".join(d.get("tags") or []) or "-")}</td>'
        f'<td>{e(clock(d.get("pending_since")))}</td><td>{_button(d["device_id"], "approve", "Approve", csrf)}'
        f'{_button(d["device_id"], "reset", "Refuse", csrf)}</td></tr>' for d in devices)
    return ('<section class="panel" id="pending"><h2>Waiting for approval</h2><table><thead><tr><th>device</th>'
            '<th>class</th><th>tags</th><th>asked (UTC)</th><th></th></tr></thead>'
            f'<tbody>{rows}</tbody></table></section>')
