"""Dependencies: server state, a database session per request, admin and device authentication."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from edgefleet.server.api.auth import device_refusal
from edgefleet.server.crud import devices as device_crud
from edgefleet.server.db.models import Device
from edgefleet.server.state import ServerState

DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SHA256 = r"^[0-9a-f]{64}$"
DB_ID_MAX = 2**63 - 1  # a larger id in a path would overflow the database's INTEGER: 422, not 500

bearer = HTTPBearer(auto_error=False, description="an admin token or a device token")


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.edgefleet
    return state


StateDep = Annotated[ServerState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.db.session() as session:
        yield session


# scope="function": the transaction commits when the route returns, before the response is sent
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID, description="device id")]


def bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return credentials.credentials


def is_admin(state: ServerState, token: str) -> bool:
    expected = state.config.admin_token
    return bool(expected) and hmac.compare_digest(token.encode(), str(expected).encode())


def require_admin(state: StateDep, session: SessionDep, credentials: Credentials) -> None:
    token = bearer_token(credentials)
    if is_admin(state, token):
        return
    if device_crud.any_device_for_token(session, token=token) is not None:
        raise HTTPException(403, "a device token cannot call operator routes")
    raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})


def require_device(device_id: DeviceIdPath, session: SessionDep, credentials: Credentials) -> Device:
    """The device named in the path, authenticated by its own token."""
    token = bearer_token(credentials)
    device = device_crud.device_for_token(session, device_id=device_id, token=token)
    if device is not None:
        return device
    raise device_refusal(session, device_id, token)


def require_device_or_admin(state: StateDep, session: SessionDep, credentials: Credentials) -> None:
    token = bearer_token(credentials)
    if is_admin(state, token) or device_crud.any_device_for_token(session, token=token) is not None:
        return
    raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})


AdminDep = Depends(require_admin)
DeviceDep = Annotated[Device, Depends(require_device)]
