"""The dashboard's two writes: reset a device's enrollment, approve a waiting device (``POST`` forms).

A form posted from a signed-in browser carries ``csrf``, an HMAC of the session cookie under the admin
token: another site can make the browser send the cookie (SameSite=strict already stops most of that),
never read the page to learn the field. ``Authorization: Bearer <admin token>`` needs no field.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from edgefleet.server.api.deps import DEVICE_ID, StateDep, is_admin
from edgefleet.server.crud import Conflict, NotFound, enrollment
from edgefleet.server.crud.rollouts import join_rollouts
from edgefleet.server.dashboard import auth
from edgefleet.server.dashboard.render import device_href, e
from edgefleet.server.rollouts import rollout_writes
from edgefleet.server.state import ServerState

router = APIRouter(include_in_schema=False)
FORM_MAX = 4096
DeviceId = Annotated[str, Path(pattern=DEVICE_ID)]


def csrf_token(state: ServerState, request: Request) -> str:
    """The field a form of this page must send back ("" for a bearer-token client)."""
    cookie = request.cookies.get(auth.COOKIE)
    token = state.config.admin_token
    if not cookie or not token:
        return ""
    return hmac.new(token.encode(), f"edgefleet-csrf:{cookie}".encode(), hashlib.sha256).hexdigest()


def _by_bearer(request: Request, state: ServerState) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(credentials) and is_admin(state, credentials.strip())


async def _allowed(request: Request, state: ServerState) -> bool:
    if _by_bearer(request, state):
        return True
    if not auth.cookie_valid(state, request.cookies.get(auth.COOKIE)):
        return False
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > FORM_MAX:
            return False
    sent = (parse_qs(raw.decode("utf-8", errors="replace")).get("csrf") or [""])[0]
    expected = csrf_token(state, request)
    return bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


def _refused() -> HTMLResponse:
    return HTMLResponse("<!doctype html><p>Refused: sign in again and use the page's own button.</p>",
                        status_code=403, headers={"Cache-Control": "no-store"})


def _reset(state: ServerState, device_id: str) -> None:
    with rollout_writes(state.db) as session:
        enrollment.reset(session, device_id=device_id)


def _approve(state: ServerState, device_id: str) -> None:
    with rollout_writes(state.db) as session:
        device = enrollment.approve(session, device_id=device_id, now=time.time())
        session.flush()
        join_rollouts(session, device=device, now=time.time())


@router.post("/devices/{device_id}/reset")
async def reset(device_id: DeviceId, request: Request, state: StateDep) -> Response:
    if not await _allowed(request, state):
        return _refused()
    try:
        await run_in_threadpool(_reset, state, device_id)
    except NotFound:
        return HTMLResponse(f"<!doctype html><p>No device <code>{e(device_id)}</code>.</p>", status_code=404)
    return RedirectResponse(device_href(device_id), status_code=303)


@router.post("/devices/{device_id}/approve")
async def approve(device_id: DeviceId, request: Request, state: StateDep) -> Response:
    if not await _allowed(request, state):
        return _refused()
    try:
        await run_in_threadpool(_approve, state, device_id)
    except NotFound:
        return HTMLResponse(f"<!doctype html><p>No device <code>{e(device_id)}</code>.</p>", status_code=404)
    except Conflict as exc:  # not waiting (any more)
        return HTMLResponse(f"<!doctype html><p>{e(exc)}</p>", status_code=409)
    return RedirectResponse(device_href(device_id), status_code=303)
