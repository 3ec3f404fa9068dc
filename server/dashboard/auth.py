"""Dashboard sign-in: the admin token, exchanged once for a signed, expiring, HttpOnly cookie.

The cookie holds ``<issued-at>.<HMAC-SHA256(admin_token, "edgefleet-dashboard:<issued-at>")>``: not the
token itself, valid for ``SESSION_TTL_S``, and void as soon as the admin token changes. A request with
``Authorization: Bearer <admin token>`` is accepted too (scripts, curl).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from fastapi import Request

from edgefleet.server.api.deps import is_admin
from edgefleet.server.state import ServerState

COOKIE = "edgefleet_dashboard"
SESSION_TTL_S = 12 * 3600.0


def _signature(admin_token: str, issued: int) -> str:
    return hmac.new(admin_token.encode(), f"edgefleet-dashboard:{issued}".encode(), hashlib.sha256).hexdigest()


def make_cookie(state: ServerState, *, now: float | None = None) -> str:
    token = state.config.admin_token
    if not token:
        raise ValueError("no admin token is configured")
    issued = int(now if now is not None else time.time())
    return f"{issued}.{_signature(token, issued)}"


def cookie_valid(state: ServerState, value: str | None, *, now: float | None = None) -> bool:
    token = state.config.admin_token
    if not token or not value or "." not in value:
        return False
    issued_text, _, signature = value.partition(".")
    if not issued_text.isdigit():
        return False
    issued = int(issued_text)
    now = now if now is not None else time.time()
    if not (now - SESSION_TTL_S <= issued <= now + 60):
        return False
    return hmac.compare_digest(signature.encode(), _signature(token, issued).encode())


def signed_in(request: Request, state: ServerState) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials and is_admin(state, credentials.strip()):
        return True
    return cookie_valid(state, request.cookies.get(COOKIE))


def safe_next(target: str | None) -> str:
    """Only a local path may follow sign-in (no open redirect to another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
