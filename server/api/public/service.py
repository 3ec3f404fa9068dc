"""Bodies of the health, jobs and trust routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgefleet.agent.wire import Root, SignedRoot
from edgefleet.server.api.public import Public, Timestamp


class MqttHealth(Public):
    connected: bool
    protocol: str = Field(description="the MQTT protocol spoken with the broker: 5, 3.1.1 or unknown")


class Health(Public):
    ok: bool
    mqtt: MqttHealth | None = Field(description="null when MQTT is off in the server's configuration")


class Ready(Public):
    ready: bool
    schema_: str = Field(alias="schema", description="the database's schema revision (this code's head)")
    replica: str = Field(description="this replica's id (server.replica_id)")
    leads: list[str] = Field(description="the singleton loops whose lease this replica holds")


class JobPublic(Public):
    id: int
    kind: str
    state: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(ge=0, le=1)
    message: str | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    created_at: Timestamp
    updated_at: Timestamp


class SignedRootPublic(SignedRoot):
    """A version of the root of trust with its signatures; ``signed`` is sent exactly as it was signed."""

    signed: Root  # type: ignore[assignment]  # documentation only: the route sends the stored document


class TrustRoots(Public):
    roots: list[SignedRootPublic]
    latest: int = Field(description="the newest root version the server has")
