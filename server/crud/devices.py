"""Devices: enrollment, token checks, listing, desired state."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.server.crud import NotFound
from edgefleet.server.db.models import Device

RUNTIME_FORMATS = {
    "litert": "tflite", "tflite_runtime": "tflite", "tensorflow": "tflite",
    "onnxruntime": "onnx", "torch": "torchscript", "executorch": "pte",
}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def enroll_device(session: Session, *, device_id: str, device_class: str | None, tags: list[str],
                  hw: dict[str, Any], now: float | None = None) -> str:
    """Create or re-enroll a device; return its new token (only the hash is stored)."""
    token = new_token()
    device = session.get(Device, device_id)
    if device is None:
        device = Device(id=device_id, online=False, session=-1, desired_revert=False, generation=0)
        session.add(device)
    device.token_hash = hash_token(token)
    device.device_class = device_class
    device.tags = list(tags)
    device.hw = dict(hw)
    device.enrolled_at = now if now is not None else time.time()
    return token


def device_for_token(session: Session, *, device_id: str, token: str) -> Device | None:
    device = session.get(Device, device_id)
    if device is None or device.token_hash is None:
        return None
    return device if hmac.compare_digest(device.token_hash, hash_token(token)) else None


def any_device_for_token(session: Session, *, token: str) -> Device | None:
    digest = hash_token(token)
    device = session.scalars(select(Device).where(Device.token_hash == digest)).first()
    if device is None or device.token_hash is None or not hmac.compare_digest(device.token_hash, digest):
        return None
    return device


def get_device(session: Session, *, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"device {device_id} is not known")
    return device


def list_devices(session: Session, *, online: bool | None = None, enrollment: str | None = None) -> list[Device]:
    """Devices by id; ``enrollment``: enrolled | pending (waiting for approval) | unenrolled."""
    query = select(Device).order_by(Device.id)
    if online is not None:
        query = query.where(Device.online == online)
    if enrollment == "enrolled":
        query = query.where(Device.token_hash.is_not(None))
    elif enrollment == "pending":
        query = query.where(Device.pending_token_hash.is_not(None))
    elif enrollment == "unenrolled":
        query = query.where(Device.token_hash.is_(None), Device.pending_token_hash.is_(None))
    return list(session.scalars(query))


def enrollment_state(device: Device) -> str:
    """enrolled | pending (waiting for the operator's approval) | unenrolled (reset, or only seen on MQTT)."""
    if device.token_hash:
        return "enrolled"
    return "pending" if device.pending_token_hash else "unenrolled"


def runnable_formats(device: Device) -> set[str] | None:
    """Formats the device can run from the runtimes it reported; None when it reported none."""
    runtimes = (device.hw or {}).get("runtimes")
    if not isinstance(runtimes, list) or not runtimes:
        return None
    return {RUNTIME_FORMATS[r] for r in runtimes if isinstance(r, str) and r in RUNTIME_FORMATS}


def set_desired(device: Device, *, version_id: int | None, rollout_id: int | None, revert: bool = False,
                now: float | None = None) -> None:
    """Every change of a device's desired state goes through here, and raises its generation."""
    device.generation = (device.generation or 0) + 1
    device.desired_version_id = version_id
    device.desired_rollout_id = rollout_id
    device.desired_revert = revert
    device.desired_issued_at = now if now is not None else time.time()


def device_public(device: Device) -> dict[str, Any]:
    return {
        "device_id": device.id, "device_class": device.device_class, "tags": device.tags or [],
        "online": bool(device.online), "session": device.session, "last_seen": device.last_seen,
        "enrolled_at": device.enrolled_at, "agent_version": device.agent_version,
        "model_name": device.model_name, "model_version": device.model_version,
        "model_sha256": device.model_sha256, "runtime": device.runtime, "delegate": device.delegate,
        "p95_ms": device.p95_ms, "cpu_pct": device.cpu_pct, "update_state": device.update_state,
        "update_reason": device.update_reason, "hw": device.hw or {},
        "enrollment": enrollment_state(device), "pending_since": device.pending_since, "epoch": device.epoch,
        "ingest": {"rejected": device.rejected or 0, "last_reason": device.rejected_reason,
                   "last_rejected_at": device.rejected_at, "ts_replaced": device.ts_replaced or 0},
        "desired": None if device.desired_version_id is None else {
            "version_id": device.desired_version_id, "rollout_id": device.desired_rollout_id,
            "revert": bool(device.desired_revert), "issued_at": device.desired_issued_at,
            "generation": device.generation},
    }
