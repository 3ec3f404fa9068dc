"""Refusals shared by the device routes and the report writer (no server state imported here)."""

from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy.orm import Session

from edgefleet.server.crud import devices as device_crud
from edgefleet.server.crud import enrollment


def device_refusal(session: Session, device_id: str, token: str) -> HTTPException:
    """Why ``token`` does not authenticate ``device_id``: 403 when it is another device's or waits for the
    operator's approval, else 401."""
    if device_crud.any_device_for_token(session, token=token) is not None:
        return HTTPException(403, f"this token does not belong to device {device_id}")
    waiting = enrollment.pending_for_token(session, token=token)
    if waiting is not None:
        return HTTPException(403, f"device {waiting.id} is waiting for the operator's approval "
                                  f"(edgefleet devices approve {waiting.id})")
    return HTTPException(401, "invalid device token", headers={"WWW-Authenticate": "Bearer"})
