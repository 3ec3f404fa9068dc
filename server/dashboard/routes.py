"""Dashboard routes: ``/`` (fleet), ``/devices/{id}``, ``/login``, ``/logout``. Read-only; admin sign-in."""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgefleet.server import latency
from edgefleet.server.api.deps import StateDep, is_admin
from edgefleet.server.crud import NotFound, fleet, registry
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import rollouts as rollout_crud
from edgefleet.server.crud import telemetry as telemetry_crud
from edgefleet.server.dashboard import auth
from edgefleet.server.dashboard.actions import csrf_token
from edgefleet.server.dashboard.device_data import render_device_data, render_pending
from edgefleet.server.dashboard.render import csp, e, page
from edgefleet.server.dashboard.views import DevicePage, Overview, render_device, render_login, render_overview
from edgefleet.server.state import ServerState

router = APIRouter(include_in_schema=False)
DEVICE_LIMIT = 500
TELEMETRY_POINTS = 360
EVENT_ROWS = 50
FINISHED_VISIBLE_S = 3600.0
LATENCY_WINDOW_S = 3600.0  # the versions table's merged p95: the last hour


def _html(body: str, *, title: str, nonce: str, status: int = 200, started: float | None = None,
          signed_in: bool = True, refresh: bool = True) -> HTMLResponse:
    headers = {"Content-Security-Policy": csp(nonce), "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Frame-Options": "DENY"}
    if started is not None:
        headers["Server-Timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.1f}"
    return HTMLResponse(page(title, body, nonce=nonce, signed_in=signed_in, refresh=refresh), status_code=status,
                        headers=headers)


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)


def _pending(state: ServerState) -> list[dict[str, Any]]:
    with state.db.session() as session:
        return [device_crud.device_public(d) for d in device_crud.list_devices(session, enrollment="pending")]


def _epochs(state: ServerState, device_id: str) -> list[dict[str, Any]]:
    since = time.time() - state.config.telemetry.downsample_after_hours * 3600
    with state.db.session() as session:
        return telemetry_crud.epoch_summary(session, device_id=device_id, since=since)


def _overview(state: ServerState, query: str) -> Overview:
    since = time.time() - FINISHED_VISIBLE_S
    with state.db.session() as session:
        online, offline = fleet.online_counts(session)
        versions = fleet.versions_in_field(session)
        rollouts = [rollout_crud.rollout_public(session, r, with_devices=False)
                    for r in fleet.visible_rollouts(session, finished_since=since)]
        found, matching = fleet.search_devices(session, query=query, limit=DEVICE_LIMIT)
        devices = [device_crud.device_public(d) for d in found]
        drift = fleet.latest_drift(session, device_ids=[d["device_id"] for d in devices])
        version_latency = _version_latency(session, {model for model, *_ in versions})
    return Overview(online=online, offline=offline, versions=versions, rollouts=rollouts, devices=devices,
                    drift=drift, shown_limit=DEVICE_LIMIT, query=query, total_matching=matching,
                    version_latency=version_latency)


def _version_latency(session: Any, models: set[str]) -> dict[tuple[str, int | None], dict[str, Any]]:
    """Per (model, version): the fleet's merged latency figures over the last LATENCY_WINDOW_S (the per-minute
    sums: one small query per model)."""
    now = time.time()
    out: dict[tuple[str, int | None], dict[str, Any]] = {}
    for model in sorted(models):
        for version, hist in latency.fleet_histograms(session, now - LATENCY_WINDOW_S, now + 60, model=model,
                                                      group_by="version").items():
            out[(model, version)] = latency.summary(hist)
    return out


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, state: StateDep, q: Annotated[str, Query(max_length=100)] = "") -> Response:
    if not auth.signed_in(request, state):
        return _to_login(request)
    started = time.perf_counter()
    body = render_overview(_overview(state, q.strip()))
    pending = render_pending(_pending(state), csrf_token(state, request))
    if pending:  # the approval queue goes after the counts, before the rest of the page
        cut = body.find('<div class="top">')
        body = body[:cut] + pending + body[cut:] if cut >= 0 else body + pending
    return _html(body, title="Fleet", nonce=secrets.token_urlsafe(16), started=started)


def _device_page(state: ServerState, device_id: str) -> DevicePage:
    with state.db.session() as session:
        device = device_crud.get_device(session, device_id=device_id)
        doc = device_crud.device_public(device)
        rows = [telemetry_crud.telemetry_public(r)
                for r in telemetry_crud.list_telemetry(session, device_id=device_id, limit=TELEMETRY_POINTS)]
        events = [telemetry_crud.event_public(r)
                  for r in telemetry_crud.list_events(session, device_id=device_id, limit=EVENT_ROWS)]
        events.reverse()
        rollouts = []
        for row, rollout in fleet.device_rollouts(session, device_id=device_id):
            model, version = registry.version_by_id(session, version_id=rollout.version_id)
            rollouts.append({"id": rollout.id, "model": model.name, "version": version.version,
                             "rollout_state": rollout.state, "state": row.state, "wave": row.wave,
                             "reason": row.reason})
        desired = None
        if device.desired_version_id is not None:
            model, version = registry.version_by_id(session, version_id=device.desired_version_id)
            desired = f"{model.name} v{version.version}"
    return DevicePage(device=doc, telemetry=rows, events=events, rollouts=rollouts, desired=desired)


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(device_id: str, request: Request, state: StateDep) -> Response:
    if not auth.signed_in(request, state):
        return _to_login(request)
    started = time.perf_counter()
    nonce = secrets.token_urlsafe(16)
    try:
        data = _device_page(state, device_id)
    except NotFound:
        return _html(f'<h1>Unknown device</h1><p>No device <code>{e(device_id)}</code>. '
                     f'<a href="/">Back to the fleet</a></p>', title="Unknown device", nonce=nonce, status=404,
                     refresh=False)
    body = render_device(data) + render_device_data(data.device, _epochs(state, device_id),
                                                    csrf_token(state, request))
    return _html(body, title=device_id, nonce=nonce, started=started)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, state: StateDep, next: str = "/", token: str | None = None) -> Response:
    """The sign-in form; ``?token=`` signs in at once (a bookmarkable link for a trusted browser), then the
    browser is sent on without the token in the address bar."""
    nonce = secrets.token_urlsafe(16)
    target = auth.safe_next(next)
    if token is not None:
        return _sign_in(state, token, target, nonce)
    return _html(render_login(next_path=target, configured=bool(state.config.admin_token)), title="Sign in",
                 nonce=nonce, signed_in=False, refresh=False)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, state: StateDep) -> Response:
    raw = (await request.body())[:8192].decode("utf-8", errors="replace")
    form = parse_qs(raw)
    token = (form.get("token") or [""])[0]
    target = auth.safe_next((form.get("next") or ["/"])[0])
    return _sign_in(state, token, target, secrets.token_urlsafe(16))


def _sign_in(state: ServerState, token: str, target: str, nonce: str) -> Response:
    if not state.config.admin_token or not is_admin(state, token.strip()):
        return _html(render_login(next_path=target, error="That is not this server's admin token.",
                                  configured=bool(state.config.admin_token)),
                     title="Sign in", nonce=nonce, status=401, signed_in=False, refresh=False)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(auth.COOKIE, auth.make_cookie(state), max_age=int(auth.SESSION_TTL_S), httponly=True,
                        samesite="strict", secure=state.config.public_url is not None
                        and state.config.public_url.startswith("https:"), path="/")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@router.get("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.COOKIE, path="/")
    return response
