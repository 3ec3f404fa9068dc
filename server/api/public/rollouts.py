"""Bodies of the rollout routes: the list, one rollout with its devices, and what travels to them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgefleet.agent.wire import ShadowSpec, TrialPolicy
from edgefleet.server.api.public import Public, Reported, Sha256, Timestamp
from edgefleet.server.api.schemas import GatesBody, Target, WaveCounts


class WaveRow(Public):
    index: int
    size: int = Field(description="cumulative devices up to and including this wave")
    devices: int
    committed: int
    failed: int
    in_flight: int
    superseded: int
    state: str = Field(description="done | active | pending | paused | aborted")


class Superseded(Public):
    device_id: str
    reason: str | None


class ShadowBrief(Public):
    passed: Reported
    agreement: Reported
    samples: Reported
    p95_ms: Reported
    cpu_pct: Reported
    reason: Reported


class RolloutDeviceRow(Public):
    device_id: str
    wave: int
    state: str
    reason: str | None
    baseline_p95_ms: float | None
    assigned_at: Timestamp | None
    updated_at: Timestamp | None
    shadow: ShadowBrief | None


class Transfer(Public):
    from_sha256: Sha256 | None = Field(description="what these devices run (null: nothing yet)")
    option: str = Field(description="installed | full | bsdiff4 | tensor | delta-q8")
    variant: str
    sha256: Sha256 | None
    bytes: int
    full_bytes: int
    ratio: float | None
    devices: int


class RolloutPublic(Public):
    id: int
    model: str | None
    version: int | None
    target: Target
    waves_spec: list[float] | WaveCounts = Field(description="the waves as the operator gave them")
    gates: GatesBody
    priority: int
    auto_revert: bool
    push: bool = Field(description="check_update is pushed over MQTT when a wave starts and on revert")
    trial: TrialPolicy | None
    shadow: ShadowSpec | None
    state: Literal["running", "paused", "completed", "aborted"]
    current_wave: int
    reason: str | None
    wave_started_at: Timestamp | None
    healthy_since: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
    waves: list[WaveRow]
    conflicts: list[Superseded] = Field(description="devices another rollout took over")


class RolloutDetail(RolloutPublic):
    devices: list[RolloutDeviceRow]


class RolloutView(RolloutDetail):
    transfers: list[Transfer] = Field(description="per kind of device: the option its manifest offers")


class RolloutList(Public):
    rollouts: list[RolloutPublic]
