"""Request bodies of the operator routes (device bodies come from agent.wire)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.agent.wire import ShadowSpec, TrialPolicy


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class VariantsRequest(Body):
    target: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Target(Body):
    device_ids: list[str] | None = Field(default=None, max_length=100_000)
    tags: list[str] | None = None
    device_class: str | None = None

    @model_validator(mode="after")
    def _some(self) -> Target:
        if not self.device_ids and not self.tags and not self.device_class:
            raise ValueError("target needs device_ids, tags or device_class")
        return self


class WaveCounts(Body):
    counts: list[int] = Field(min_length=1, max_length=100)


class GatesBody(Body):
    min_committed_ratio: float = Field(default=0.9, ge=0.0, le=1.0)
    max_failure_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    max_p95_regression: float | None = Field(default=1.5, gt=0.0)
    soak_s: float = Field(default=30.0, ge=0.0)
    # shadow gates over the devices' shadow reports (None: the rollout's shadow.min_agreement / max_latency_ms)
    min_shadow_agreement: float | None = Field(default=None, ge=0.0, le=1.0)
    max_shadow_p95_ms: float | None = Field(default=None, gt=0.0)
    # the p95 latency gate (docs/rollouts.md)
    latency_alpha: float = Field(default=0.01, gt=0.0, le=0.5,
                                 description="significance level: a wave pauses only when p is below it")
    latency_min_devices: int = Field(default=3, ge=1, le=10_000,
                                     description="devices needed on each side of the updated/control comparison")
    latency_min_samples: int = Field(default=3, ge=1, le=10_000,
                                     description="telemetry messages a device needs in a window to count")
    latency_warmup_s: float = Field(default=10.0, ge=0.0, le=3600.0,
                                    description="seconds after a device commits that the gate leaves out")
    latency_baseline_s: float = Field(default=300.0, gt=0.0, le=86_400.0,
                                      description="pre-update window of the paired comparison, seconds")
    latency_max_wait_s: float | None = Field(default=900.0, ge=0.0, le=86_400.0,
                                             description="longest wait for latency data past the soak; null: "
                                                         "no limit")


class RolloutCreate(Body):
    model: str = Field(min_length=1, max_length=128)
    version: int = Field(ge=1)
    target: Target
    waves: list[float] | WaveCounts = Field(default_factory=lambda: [1.0, 10.0, 50.0, 100.0])
    gates: GatesBody = Field(default_factory=GatesBody)
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    trial: TrialPolicy | None = None
    shadow: ShadowSpec | None = None
    auto_revert: bool = False
    push: bool = Field(default=True, description="publish check_update over MQTT to a wave's devices when it "
                       "starts and to the devices a revert sends back (spread over rollouts.push_spread_s); "
                       "false: devices learn at their next poll")

    def waves_spec(self) -> Any:
        return self.waves.model_dump() if isinstance(self.waves, WaveCounts) else list(self.waves)


class AbortBody(Body):
    revert: bool = False


class CommandBody(Body):
    type: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)


class UploadMeta(Body):
    task: str = Field(default="other", pattern=r"^(classification|detection|other)$")
    preprocess: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None


class EnrollmentTokenBody(Body):
    ttl_h: float | None = Field(default=None, gt=0, le=24 * 365, description="hours; default enrollment.token_ttl_h")
