"""What a device may download: exactly what the last manifest sent to it offered.

The check-in records the offer (``Device.offered``) from the signed body it sends; the download routes
refuse a device token anything else with 403. The operator's admin token downloads any artifact.
"""

from __future__ import annotations

import json
from typing import Any

from server.db.models import Device


def offer_of(body: bytes | None) -> dict[str, Any] | None:
    """``{"artifact": sha256, "delta": [from, to] | None}`` of a signed manifest body; None for no manifest."""
    if body is None:
        return None
    manifest = json.loads(body)["manifest"]
    artifact = manifest["artifact"]["sha256"]
    delta = manifest.get("delta")
    return {"artifact": artifact, "delta": [delta["from_sha256"], artifact] if delta else None}


def record_offer(device: Device, body: bytes | None) -> None:
    offer = offer_of(body)
    if device.offered != offer:  # an unchanged offer writes nothing
        device.offered = offer


def artifact_refusal(device: Device, sha256: str) -> str | None:
    """None when the device's manifest offered ``sha256``; else the one-line reason."""
    offered = device.offered or {}
    if offered.get("artifact") == sha256:
        return None
    return f"artifact {sha256[:16]}… was not offered to device {device.id} by its manifest"


def delta_refusal(device: Device, from_sha256: str, to_sha256: str) -> str | None:
    offered = device.offered or {}
    if offered.get("delta") == [from_sha256, to_sha256]:
        return None
    return f"delta {from_sha256[:16]}…→{to_sha256[:16]}… was not offered to device {device.id} by its manifest"
