"""What a device may download: exactly what the last manifest sent to it offered.

The check-in records the offer (``Device.offered``) from the signed body it sends, through the offer writer
(server/offer_writer.py: off the check-in's path, many in one transaction); the download routes refuse a
device token anything else with 403. Before refusing, the offer is read again from the manifest
the device would get now (the manifest service's cache makes that cheap), so an offer whose check-in did
not commit never locks a device out. The operator's admin token downloads any artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from edgefleet.agent.wire import Manifest, SignedManifest
from edgefleet.server.db.models import Device
from edgefleet.server.manifests import ManifestService
from edgefleet.server.offer_writer import OfferWriter


def offer_of(body: bytes | None) -> dict[str, Any] | None:
    """``{"artifact": sha256, "delta": [from, to] | None}`` of a signed manifest body; None for no manifest.
    Read through the wire models the agent parses it with, so both always agree on what was offered."""
    if body is None:
        return None
    manifest = Manifest.model_validate(SignedManifest.model_validate_json(body).manifest)
    artifact = manifest.artifact.sha256
    return {"artifact": artifact,
            "delta": [manifest.delta.from_sha256, artifact] if manifest.delta is not None else None}


def record_offer(device: Device, body: bytes | None, writer: OfferWriter) -> None:
    """Record what ``body`` offers the device: through ``writer``, off the caller's transaction; on the device
    row in the caller's session only when the writer is not running (the server stopping)."""
    offer = offer_of(body)
    if device.offered != offer and not writer.submit(device.id, offer):  # an unchanged offer writes nothing
        device.offered = offer


def artifact_refusal(device_id: str, offered: dict[str, Any] | None, sha256: str) -> str | None:
    """None when the offer ``offered`` (of device ``device_id``) names ``sha256``; else the one-line reason."""
    if (offered or {}).get("artifact") == sha256:
        return None
    return f"artifact {sha256[:16]}… was not offered to device {device_id} by its manifest"


def delta_refusal(device_id: str, offered: dict[str, Any] | None, from_sha256: str, to_sha256: str) -> str | None:
    if (offered or {}).get("delta") == [from_sha256, to_sha256]:
        return None
    return f"delta {from_sha256[:16]}…→{to_sha256[:16]}… was not offered to device {device_id} by its manifest"


def refusal(manifests: ManifestService, session: Session, device: Device,
            judge: Callable[[dict[str, Any] | None], str | None]) -> str | None:
    """None when ``judge`` allows the download under the recorded offer or under the manifest of now (an offer
    the offer writer has not stored yet, or never will); the latter is not written here: judging writes nothing."""
    reason = judge(device.offered)
    if reason is None:
        return None
    signed = manifests.signed(session, device=device, now=time.time())
    return judge(offer_of(signed.body if signed is not None else None))
