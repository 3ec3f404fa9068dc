"""The wire contract: every document that crosses between device, broker and server.

Agent and server both import these models; there is no second copy of any schema.
Field names follow ../shared/DESIGN.md ("Wire contract", "Desired-state manifest").
Documents from the other side are parsed with ``extra="ignore"`` so that a newer
peer can add fields without breaking an older one.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TOPIC_ROOT = "edgefleet/v1/devices"
SHARED_GROUP = "edgefleet"

ModelFormat = Literal["tflite", "onnx", "torchscript", "pte"]


def device_topic(device_id: str, leaf: str) -> str:
    """``edgefleet/v1/devices/{device_id}/{leaf}``: status, telemetry, events, results or commands."""
    return f"{TOPIC_ROOT}/{device_id}/{leaf}"


def now() -> float:
    return time.time()


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


# --- model description -------------------------------------------------------------------------


class TensorSpec(WireModel):
    """One input or output of a model. ``None`` in ``shape`` is a dynamic dimension."""

    name: str
    shape: list[int | None]
    dtype: str  # numpy dtype name: float32, uint8, int8, int64, ...
    scale: float | None = None  # quantization: real = scale * (q - zero_point)
    zero_point: int | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None and self.scale != 0.0 and self.dtype in ("uint8", "int8", "int16")


class PreprocessSpec(WireModel):
    """How a camera frame or image becomes the model's input tensor."""

    resize: Literal["stretch", "letterbox", "center_crop", "none"] = "stretch"
    color: Literal["RGB", "BGR", "GRAY"] = "RGB"
    layout: Literal["NHWC", "NCHW", "auto"] = "auto"
    mean: list[float] | None = None  # subtracted after scaling, per channel
    std: list[float] | None = None
    scale: float | None = None  # multiplied first, e.g. 1/255
    dtype: str | None = None  # None: the input's dtype
    input: str | None = None  # which input takes the image; None: the first 4-D input


class ModelMeta(WireModel):
    """What the agent needs to know about a model besides its file."""

    name: str
    version: int = 0
    sha256: str = ""
    task: Literal["classification", "detection", "other"] = "other"
    labels: list[str] | None = None
    preprocess: PreprocessSpec | None = None
    # detectors: which outputs hold boxes [N,4] xyxy, scores [N] and classes [N] (shadow IoU matching)
    boxes: dict[str, str] | None = None


# --- desired-state manifest --------------------------------------------------------------------


class ArtifactRef(WireModel):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    format: ModelFormat
    variant: str = "reference"
    url: str


class DeltaRef(WireModel):
    """A patch that turns the artifact with ``from_sha256`` into the manifest's artifact."""

    from_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of the patch itself
    size: int = Field(ge=0)
    # "bsdiff4" (bytes) | "tensor" (agent/ota/tensordelta.py; its format version is in the patch's header).
    # A plain string so that a newer server's algorithm is one this agent skips (full artifact), not a bad manifest
    algorithm: str = Field(default="bsdiff4", pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")
    url: str


class RuntimeHints(WireModel):
    prefer: str = "auto"
    delegate: str = "auto"
    threads: int = 0


class TrialPolicy(WireModel):
    """How long and against what a freshly swapped model is watched before it is committed."""

    window_s: float = 30.0
    min_inferences: int = 20
    max_error_rate: float = 0.05
    max_p95_latency_ms: float | None = None  # absolute bound
    max_latency_ratio: float | None = 2.0  # bound relative to the previous model's p95


class ShadowSpec(WireModel):
    """Run the candidate beside the serving model on a sample of live inputs before swapping."""

    sample_fraction: float = Field(default=0.1, gt=0.0, le=1.0)
    cpu_budget_pct: float = Field(default=20.0, gt=0.0, le=100.0)
    min_samples: int = 50
    min_agreement: float | None = None
    max_latency_ms: float | None = None


class Manifest(WireModel):
    device_id: str
    model: ModelMeta
    artifact: ArtifactRef
    delta: DeltaRef | None = None
    runtime: RuntimeHints = Field(default_factory=RuntimeHints)
    trial: TrialPolicy | None = None
    shadow: ShadowSpec | None = None
    rollout_id: int | None = None
    revert: bool = False  # set by the server when an aborted rollout sends a device back
    # agent.quality.drift.ReferenceProfile JSON of this version: devices score live drift against it
    drift_profile: dict[str, Any] | None = None
    issued_at: float
    expires_at: float


class SignedManifest(WireModel):
    manifest: dict[str, Any]  # verified as canonical JSON before it is parsed as a Manifest
    signature: str
    key_id: str | None = None


# --- MQTT payloads ------------------------------------------------------------------------------


class ModelRef(WireModel):
    name: str | None = None
    version: int | None = None
    sha256: str | None = None


class Birth(WireModel):
    online: Literal[True] = True
    session: int
    agent_version: str
    model: ModelRef = Field(default_factory=ModelRef)
    runtime: str | None = None
    delegate: str | None = None
    hw: dict[str, Any] = Field(default_factory=dict)
    device_class: str | None = None
    ts: float = Field(default_factory=now)


class Will(WireModel):
    online: Literal[False] = False
    session: int


class LatencySummary(WireModel):
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


class InferenceStats(WireModel):
    count: int = 0
    errors: int = 0
    latency_ms: LatencySummary = Field(default_factory=LatencySummary)
    fps: float = 0.0
    dropped_frames: int = 0


class SystemStats(WireModel):
    cpu_pct: float | None = None
    mem_mb: float | None = None
    rss_mb: float | None = None
    temp_c: float | None = None
    disk_free_mb: float | None = None
    uptime_s: float | None = None


class Telemetry(WireModel):
    seq: int
    ts: float
    model: ModelRef = Field(default_factory=ModelRef)
    runtime: str | None = None
    delegate: str | None = None
    inference: InferenceStats = Field(default_factory=InferenceStats)
    system: SystemStats = Field(default_factory=SystemStats)
    spool: dict[str, int] | None = None  # queued / dropped counts of the store-and-forward spool
    drift: dict[str, Any] | None = None  # per-statistic drift scores over the live window
    shadow: dict[str, Any] | None = None  # candidate agreement and latency while shadowing


EventType = str  # "update.downloading", "update.verified", ..., "runtime.fallback", "command.error"


class Event(WireModel):
    seq: int
    ts: float
    type: EventType
    model_config = ConfigDict(extra="allow")


class Command(WireModel):
    id: str
    type: str  # check_update | set_telemetry_interval | set_results | ...
    args: dict[str, Any] = Field(default_factory=dict)


# --- HTTP bodies (device side) -----------------------------------------------------------------


class EnrollRequest(WireModel):
    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    enrollment_token: str
    device_class: str | None = None
    tags: list[str] = Field(default_factory=list)
    hw: dict[str, Any] = Field(default_factory=dict)


class EnrollResponse(WireModel):
    device_id: str
    token: str


UpdateState = Literal[
    "idle",
    "downloading",
    "verifying",
    "installing",
    "trial",
    "committed",
    "rolled_back",
    "rejected",
    "failed",
]


class UpdateReport(WireModel):
    """What a device tells the server about an update it is applying."""

    state: UpdateState
    model: str
    version: int
    sha256: str | None = None
    rollout_id: int | None = None
    reason: str | None = None
    ts: float = Field(default_factory=now)
    metrics: dict[str, Any] = Field(default_factory=dict)  # trial or shadow figures
