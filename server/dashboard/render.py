"""The page shell and small formatting helpers. ``e()`` escapes every value that reaches the markup."""

from __future__ import annotations

import math
import time
from html import escape
from typing import Any
from urllib.parse import quote

DRIFT_THRESHOLD = 0.2  # a population-stability-style score at or above this is flagged

STYLE = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--muted:#6b7385;--line:#e3e6ec;--ok:#1f9d55;--bad:#d64545;
--warn:#d69e2e;--blue:#3b6fd8;--violet:#8455c9}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--ink)}
header{display:flex;align-items:center;gap:16px;padding:12px 24px;background:#1d2330;color:#fff}
header a{color:#fff;text-decoration:none}header .brand{font-weight:700;font-size:16px;letter-spacing:.3px}
header .spacer{flex:1}header label,header .meta{color:#c5cad6;font-size:12px}
main{max-width:1280px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:20px;margin:4px 0 16px}h2{font-size:15px;margin:0 0 10px;color:#2b3345}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin-bottom:16px}
.card,.panel{background:var(--card);border:1px solid var(--line);border-radius:8px}
.card{padding:12px 16px}.card .n{font-size:26px;font-weight:700}.card .l{color:var(--muted);font-size:12px;
text-transform:uppercase;letter-spacing:.5px}
.panel{padding:14px 16px;margin-bottom:16px;overflow-x:auto}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:16px}
.top{display:grid;grid-template-columns:minmax(340px,2fr) minmax(520px,3fr);gap:16px}
@media (max-width:960px){.top{grid-template-columns:1fr}}
td.id{max-width:240px;overflow:hidden;text-overflow:ellipsis}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);
white-space:nowrap}th{font-size:12px;color:var(--muted);font-weight:600;text-transform:uppercase;letter-spacing:.4px}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr:hover td{background:#fafbfc}
td.wrap{white-space:normal;word-break:break-word}
a{color:var(--blue)}code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:6px;vertical-align:middle}
.dot.on{background:var(--ok)}.dot.off{background:#b7bdc9}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#eef0f4;color:#3a4254}
.pill.running,.pill.committed,.pill.active{background:#e3f5ea;color:#17663a}
.pill.paused,.pill.trial,.pill.downloading,.pill.installing,.pill.verifying,.pill.assigned{background:#fdf3dc;color:#8a5a00}
.pill.aborted,.pill.rolled_back,.pill.rejected,.pill.failed{background:#fde6e6;color:#9b1c1c}
.pill.completed,.pill.done{background:#e6eefc;color:#274e9c}
.flag{color:var(--bad);font-weight:600}.muted{color:var(--muted)}
svg.chart{max-width:100%;height:auto;background:#fff}svg.chart .grid{stroke:#edf0f4;stroke-width:1}
svg.chart .tick,svg.chart .legend{font-size:11px;fill:#6b7385}svg.chart .chart-title{font-size:12px;font-weight:600;
fill:#2b3345}svg.chart .empty{font-size:12px;fill:#9aa1b1}
svg polyline{fill:none;stroke-width:1.8;stroke-linejoin:round}svg line.p50,svg polyline.p50{stroke:var(--blue)}
svg line.p95,svg polyline.p95{stroke:var(--bad)}svg line.cpu,svg polyline.cpu{stroke:var(--violet)}
svg line.p50,svg line.p95,svg line.cpu{stroke-width:3}svg circle.p50{fill:var(--blue)}svg circle.p95{fill:var(--bad)}
svg circle.cpu{fill:var(--violet)}
svg.bar{vertical-align:middle}svg.bar .bar-bg{fill:#edf0f4}svg.bar .ok{fill:var(--ok)}svg.bar .flight{fill:var(--warn)}
svg.bar .bad{fill:var(--bad)}svg.bar .field{fill:var(--blue)}
.wave{display:inline-flex;flex-direction:column;margin-right:10px;font-size:11px;color:var(--muted)}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}dl.kv dt{color:var(--muted)}
dl.kv dd{margin:0}
form.filter input{padding:4px 8px;border:1px solid var(--line);border-radius:6px}
.login{max-width:380px;margin:80px auto}.login input{width:100%;padding:8px;margin:8px 0;border:1px solid var(--line);
border-radius:6px}.login button{padding:8px 16px;border:0;border-radius:6px;background:var(--blue);color:#fff}
.error{color:var(--bad)}
form.inline{display:inline;margin-right:8px}form.inline button{padding:4px 12px;border:0;border-radius:6px;
background:var(--blue);color:#fff;cursor:pointer}form.inline button.reset{background:var(--bad)}
"""

# reload the page every REFRESH_S seconds while the box is ticked (remembered in localStorage)
REFRESH_SCRIPT = """
(function(){var box=document.getElementById('auto');if(!box)return;
box.checked=localStorage.getItem('edgefleet-refresh')!=='off';
box.addEventListener('change',function(){localStorage.setItem('edgefleet-refresh',box.checked?'on':'off')});
setInterval(function(){if(box.checked)location.reload()},%d);})();
"""
REFRESH_S = 15


def e(value: Any) -> str:
    """Escape for HTML text and attribute values."""
    return escape("" if value is None else str(value), quote=True)


def device_href(device_id: str) -> str:
    return "/devices/" + quote(device_id, safe="")


def ago(ts: Any, now: float | None = None) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "never"
    seconds = (now if now is not None else time.time()) - float(ts)
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def clock(ts: Any) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts)))
    except (OverflowError, OSError, ValueError):  # a device's absurd time (1e300, NaN) is no page's 500
        return "-"


def num(value: Any, digits: int = 1, suffix: str = "") -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def pill(state: Any) -> str:
    text = e(state if state is not None else "-")
    css = text if text.replace("_", "").isalnum() else ""
    return f'<span class="pill {css}">{text}</span>'


def drift_flag(drift: Any) -> tuple[bool, str]:
    """(flagged, short text) from a telemetry ``drift`` section: an explicit ``alert``/``drifted`` boolean
    wins; otherwise the largest numeric score, flagged at or above ``DRIFT_THRESHOLD``."""
    if not isinstance(drift, dict) or not drift:
        return False, ""
    max_psi = drift.get("max_psi")
    if isinstance(max_psi, int | float) and isinstance(drift.get("drifted"), bool):  # agent.quality DriftMonitor
        text = f"{drift.get('max_stat') or 'psi'} {float(max_psi):.2f}"
        if isinstance(drift.get("reason"), str):  # e.g. "reference is synthetic": scored, never an alarm
            text += f" ({drift['reason']})"
        return bool(drift["drifted"]), text if drift.get("ready", True) else f"warming up ({text})"
    for key in ("alert", "drifted", "flag"):
        if isinstance(drift.get(key), bool):
            return bool(drift[key]), key if drift[key] else "ok"
    scores = [(k, float(v)) for k, v in drift.items()
              if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if not scores:
        return False, ""
    key, value = max(scores, key=lambda kv: kv[1])
    return value >= DRIFT_THRESHOLD, f"{key} {value:.2f}"


def page(title: str, body: str, *, nonce: str, refresh: bool = True, signed_in: bool = True) -> str:
    toggle = (f'<label><input type="checkbox" id="auto"> auto-refresh {REFRESH_S}s</label>' if refresh else "")
    nav = (f'<a href="/">Fleet</a>{toggle}<span class="meta">{e(clock(time.time()))} UTC</span>'
           '<a href="/logout">Sign out</a>') if signed_in else ""
    script = f'<script nonce="{e(nonce)}">{REFRESH_SCRIPT % (REFRESH_S * 1000)}</script>' if refresh else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(title)} · edgefleet</title><style>{STYLE}</style></head><body>"
            f'<header><a class="brand" href="/">edgefleet</a><span class="spacer"></span>{nav}</header>'
            f"<main>{body}</main>{script}</body></html>")


def csp(nonce: str) -> str:
    return ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
            f"script-src 'nonce-{nonce}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
