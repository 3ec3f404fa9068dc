"""The wire contract: every document that crosses between device, broker and server.

Agent and server both import these models; there is no second copy of any schema.
Field names follow ../shared/DESIGN.md ("Wire contract", "Desired-state manifest").
Documents from the other side are parsed with ``extra="ignore"`` so that a newer
peer can add fields without breaking an older one.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from edgefleet.agent import latency as latency_buckets

TOPIC_ROOT = "edgefleet/v1/devices"
SHARED_GROUP = "edgefleet"

ModelFormat = Literal["tflite", "onnx", "torchscript", "pte"]


def device_topic(device_id: str, leaf: str) -> str:
    """``edgefleet/v1/devices/{device_id}/{leaf}``: status, telemetry, events, results or commands."""
    return f"{TOPIC_ROOT}/{device_id}/{leaf}"


def now() -> float:
    return time.time()


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), defer_build=True)


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
    # the candidate's first inferences are cold (allocations, caches): the first N, and all within S s of the
    # swap, count for the error rate but not for latency; min_inferences counts latencies after them
    warmup_inferences: int = Field(default=5, ge=0, le=10_000)
    warmup_s: float = Field(default=0.5, ge=0.0, le=600.0)
    # a ratio breach needs the lower bound of this two-sided CI of p95(candidate)/p95(previous) above the limit
    confidence: float = Field(default=0.95, ge=0.5, le=0.999)


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
    # grows whenever the server changes this device's desired state (reverts too): replays are refused
    generation: int = Field(default=0, ge=0)


# What an agent that verifies the RFC 8785 form sends in Accept; without it the server sends the legacy form.
MANIFEST_MEDIA_TYPE = "application/vnd.edgefleet.manifest.v2+json"


class Signature(WireModel):
    keyid: str  # sha256 of the Ed25519 public key's 32 raw bytes, hex
    sig: str  # base64 Ed25519 over the RFC 8785 form of the signed document


class SignedManifest(WireModel):
    manifest: dict[str, Any]  # verified as canonical JSON before it is parsed as a Manifest
    signatures: list[Signature] = Field(default_factory=list, max_length=16)  # RFC 8785 form
    root_version: int | None = None  # the newest root of trust the server has (a hint to fetch the chain)
    signature: str | None = None  # legacy form: base64 Ed25519 over json.dumps(sort_keys=True)
    key_id: str | None = None  # legacy form


# --- root of trust (docs/ota.md "Root of trust") ----------------------------------------------------


class RootKey(WireModel):
    keytype: Literal["ed25519"] = "ed25519"
    public: str  # base64 of the 32 raw bytes


class RootRole(WireModel):
    keyids: list[str] = Field(min_length=1, max_length=32)
    threshold: int = Field(ge=1)


class Root(WireModel):
    """One version of the root of trust: its keys, and which keys (how many of them) sign what."""

    type: Literal["root"]
    version: int = Field(ge=1)
    keys: dict[str, RootKey] = Field(max_length=64)
    roles: dict[Literal["root", "manifest"], RootRole]
    created_at: float | None = None


class SignedRoot(WireModel):
    signed: dict[str, Any]  # a Root, verified as canonical JSON before it is parsed
    signatures: list[Signature] = Field(max_length=32)


# --- MQTT payloads ------------------------------------------------------------------------------
# Every device message is untrusted input to the server: each field is bounded to what its database
# column holds (64-bit seq/epoch/session, 32-bit counts and versions, finite floats, strings of the
# column's length without NUL), and free-form sections to FREEFORM_DEPTH / FREEFORM_ITEMS.
# Numbers are strict: a JSON true is not a count, 1.0 is not a seq.

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
METRIC_MAX = 1e15  # any figure a device reports (ms, %, MB, s, fps) is far below this
FREEFORM_DEPTH = 8
FREEFORM_ITEMS = 2000  # dict entries + list items over one free-form section

Counter64 = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]  # seq, epoch, session
Count32 = Annotated[int, Field(strict=True, ge=0, le=INT32_MAX)]  # per-interval counts, model versions
Metric = Annotated[float, Field(strict=True, ge=-METRIC_MAX, le=METRIC_MAX)]  # finite: NaN and inf fail too
Timestamp = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # range: judged by the receiver
Name64 = Annotated[str, StringConstraints(strict=True, max_length=64, pattern=r"^[^\x00]*$")]
Name128 = Annotated[str, StringConstraints(strict=True, max_length=128, pattern=r"^[^\x00]*$")]


def bounded_tree(value: Any) -> Any:
    """A free-form JSON section (``hw``, ``drift``, ``shadow``, event fields) at most FREEFORM_DEPTH deep
    with at most FREEFORM_ITEMS entries; strings without NUL."""
    budget = FREEFORM_ITEMS
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = list(node.values())
            if any("\x00" in key for key in node):
                raise PydanticCustomError("string_pattern_mismatch", "a key holds a NUL character")
        elif isinstance(node, list):
            children = node
        else:
            if isinstance(node, str) and "\x00" in node:
                raise PydanticCustomError("string_pattern_mismatch", "a string holds a NUL character")
            continue
        if depth >= FREEFORM_DEPTH:
            raise PydanticCustomError("too_deep", "nested deeper than {depth} levels", {"depth": FREEFORM_DEPTH})
        budget -= len(children)
        if budget < 0:
            raise PydanticCustomError("too_large", "more than {items} entries", {"items": FREEFORM_ITEMS})
        stack.extend((child, depth + 1) for child in children)
    return value


FreeForm = Annotated[dict[str, Any], AfterValidator(bounded_tree)]


class ModelRef(WireModel):
    name: Name128 | None = None
    version: Count32 | None = None
    sha256: Name64 | None = None


class Birth(WireModel):
    online: Literal[True] = True
    session: Counter64
    epoch: Counter64 = 0  # the spool's epoch: a reset device's sessions count again from 1 in a new epoch
    agent_version: Name64
    model: ModelRef = Field(default_factory=ModelRef)
    runtime: Name64 | None = None
    delegate: Name64 | None = None
    hw: FreeForm = Field(default_factory=dict)
    device_class: Name64 | None = None
    ts: Timestamp = Field(default_factory=now)


class Will(WireModel):
    online: Literal[False] = False
    session: Counter64
    epoch: Counter64 = 0


class LatencySummary(WireModel):
    p50: Metric | None = None
    p95: Metric | None = None
    p99: Metric | None = None
    max: Metric | None = None


class LatencyHist(WireModel):
    """Latencies since the previous message on the contract's buckets (``agent/latency.py``): ``counts[j]``
    fell in bucket ``offset + j``; at most ``latency.BUCKETS`` buckets, each count a 32-bit count."""

    offset: Annotated[int, Field(strict=True, ge=0, lt=latency_buckets.BUCKETS)] = 0
    counts: Annotated[list[Count32], Field(max_length=latency_buckets.BUCKETS)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _within_buckets(self) -> LatencyHist:
        if self.offset + len(self.counts) > latency_buckets.BUCKETS:
            raise PydanticCustomError("too_long", "offset + len(counts) is past the last bucket ({buckets})",
                                      {"buckets": latency_buckets.BUCKETS})
        return self

    @property
    def total(self) -> int:
        return sum(self.counts)

    def buckets(self) -> dict[int, int]:
        """Sparse counts by bucket index."""
        return latency_buckets.decode(self.offset, self.counts)


class InferenceStats(WireModel):
    count: Count32 = 0
    errors: Count32 = 0
    latency_ms: LatencySummary = Field(default_factory=LatencySummary)
    latency_hist: LatencyHist | None = None  # agents from before issue 18 send none
    fps: Metric = 0.0
    dropped_frames: Count32 = 0

    @model_validator(mode="after")
    def _hist_within_count(self) -> InferenceStats:
        if self.latency_hist is not None and self.latency_hist.total > self.count:
            raise PydanticCustomError("hist_count", "latency_hist counts more latencies than inference.count")
        return self


class SystemStats(WireModel):
    cpu_pct: Metric | None = None
    mem_mb: Metric | None = None
    rss_mb: Metric | None = None
    temp_c: Metric | None = None
    disk_free_mb: Metric | None = None
    uptime_s: Metric | None = None


class Telemetry(WireModel):
    seq: Counter64
    epoch: Counter64 = 0  # names the spool seq counts in (0: an agent from before epochs)
    ts: Timestamp
    model: ModelRef = Field(default_factory=ModelRef)
    runtime: Name64 | None = None
    delegate: Name64 | None = None
    inference: InferenceStats = Field(default_factory=InferenceStats)
    system: SystemStats = Field(default_factory=SystemStats)
    spool: Annotated[dict[Name64, Counter64], Field(max_length=32)] | None = None  # store-and-forward counts
    drift: FreeForm | None = None  # per-statistic drift scores over the live window
    shadow: FreeForm | None = None  # candidate agreement and latency while shadowing


EventType = str  # "update.downloading", "update.verified", ..., "runtime.fallback", "command.error"


class Event(WireModel):
    seq: Counter64
    epoch: Counter64 = 0
    ts: Timestamp
    type: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64, pattern=r"^[^\x00]*$")]
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _bounded_fields(self) -> Event:
        if self.__pydantic_extra__:
            bounded_tree(self.__pydantic_extra__)
        return self


class Command(WireModel):
    id: str
    type: str  # check_update | set_telemetry_interval | set_results | ...
    args: dict[str, Any] = Field(default_factory=dict)


# --- HTTP bodies (device side) -----------------------------------------------------------------


class EnrollRequest(WireModel):
    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    enrollment_token: str = Field(max_length=256)  # the shared token, or a one-time token for this id
    device_class: Name64 | None = None
    tags: list[Name64] = Field(default_factory=list, max_length=64)
    hw: FreeForm = Field(default_factory=dict)


class EnrollResponse(WireModel):
    device_id: str
    token: str
    status: Literal["enrolled", "pending"] = "enrolled"  # pending: refused until the operator approves it


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
