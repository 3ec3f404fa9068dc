"""Enrollment: which credential may give a device id its token.

- The shared ``enrollment_token`` enrolls a **new** id (zero-touch), or one the operator reset; with
  ``enrollment.mode: approve`` the device then waits for the operator (its token is issued but refused
  by every device route until ``approve``).
- An enrolled (or waiting) id re-enrolls only with its **current device token** (``Authorization:
  Bearer``), which rotates it; anyone else holding the shared token gets ``Refused(409)``.
- A **one-time token** the operator made for one id enrolls or re-enrolls that id once, without approval.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.agent.errors import EdgefleetError
from edgefleet.server.crud import Conflict, NotFound
from edgefleet.server.crud.devices import hash_token, new_token
from edgefleet.server.db.models import Device, EnrollmentToken

EnrollStatus = Literal["enrolled", "pending"]


class Refused(EdgefleetError):
    """The request may not enroll this id: ``status`` 401 (no valid credential) or 409 (already enrolled)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass(frozen=True)
class Enrolled:
    device: Device
    token: str
    status: EnrollStatus


def _same(stored: str | None, token: str | None) -> bool:
    return bool(stored) and bool(token) and hmac.compare_digest(str(stored), hash_token(str(token)))


def enroll(session: Session, *, device_id: str, credential: str, bearer: str | None, shared_token: str | None,
           mode: str, device_class: str | None, tags: list[str], hw: dict[str, Any], now: float) -> Enrolled:
    """Enroll ``device_id`` with ``credential`` (the body's enrollment token) and ``bearer`` (its current
    device token, when it has one)."""
    device = session.get(Device, device_id)
    if device is not None and _same(device.token_hash, bearer):
        return _issue(device, "enrolled", device_class, tags, hw, now)
    if device is not None and _same(device.pending_token_hash, bearer):
        return _issue(device, "pending", device_class, tags, hw, now)
    one_time = session.get(EnrollmentToken, device_id)
    if one_time is not None and _same(one_time.token_hash, credential):
        if one_time.expires_at < now:
            raise Refused(401, f"the one-time enrollment token for {device_id} has expired")
        session.delete(one_time)
        return _issue(device or _new(session, device_id), "enrolled", device_class, tags, hw, now)
    if not shared_token or not hmac.compare_digest(credential.encode(), shared_token.encode()):
        raise Refused(401, "invalid enrollment token")
    if device is not None and (device.token_hash or device.pending_token_hash):
        waiting = " and waiting for approval" if device.pending_token_hash else ""
        raise Refused(409, f"device {device_id} is already enrolled{waiting}: re-enroll with its current device "
                           f"token, or have the operator reset it (edgefleet devices reset {device_id})")
    status: EnrollStatus = "pending" if mode == "approve" else "enrolled"
    return _issue(device or _new(session, device_id), status, device_class, tags, hw, now)


def _new(session: Session, device_id: str) -> Device:
    device = Device(id=device_id, online=False, session=-1, epoch=0, desired_revert=False, tags=[], hw={},
                    rejected=0, ts_replaced=0)
    session.add(device)
    return device


def _issue(device: Device, status: EnrollStatus, device_class: str | None, tags: list[str], hw: dict[str, Any],
           now: float) -> Enrolled:
    token = new_token()
    if status == "enrolled":
        device.token_hash, device.pending_token_hash, device.pending_since = hash_token(token), None, None
        device.enrolled_at = now
    else:
        device.token_hash, device.pending_token_hash = None, hash_token(token)
        device.pending_since = device.pending_since or now
    device.device_class = device_class
    device.tags = list(tags)
    device.hw = dict(hw)
    return Enrolled(device, token, status)


def approve(session: Session, *, device_id: str, now: float) -> Device:
    """Let a waiting device in: the token it was given becomes valid."""
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"device {device_id} is not known")
    if not device.pending_token_hash:
        raise Conflict(f"device {device_id} is not waiting for approval")
    device.token_hash, device.pending_token_hash, device.pending_since = device.pending_token_hash, None, None
    device.enrolled_at = now
    return device


def reset(session: Session, *, device_id: str) -> Device:
    """Revoke the device's token (and a waiting request): the id may enroll again with the shared token.
    Its data stays; until it enrolls again nothing it sends is stored."""
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"device {device_id} is not known")
    device.token_hash = device.pending_token_hash = device.pending_since = None
    device.online = False  # its statuses are not read until it enrolls again, which makes it announce itself
    return device


def create_token(session: Session, *, device_id: str, ttl_s: float, now: float) -> tuple[str, float]:
    """A one-time enrollment token for ``device_id`` (replacing an earlier one); (token, expires_at)."""
    token = new_token()
    row = session.get(EnrollmentToken, device_id)
    if row is None:
        row = EnrollmentToken(device_id=device_id)
        session.add(row)
    row.token_hash, row.created_at, row.expires_at = hash_token(token), now, now + ttl_s
    return token, row.expires_at


def pending_for_token(session: Session, *, token: str) -> Device | None:
    digest = hash_token(token)
    device = session.scalars(select(Device).where(Device.pending_token_hash == digest)).first()
    return device if device is not None and _same(device.pending_token_hash, token) else None
