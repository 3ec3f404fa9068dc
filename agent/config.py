"""The agent's configuration (configs/agent.yaml); see ../shared/DESIGN.md "Configuration"."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.agent.configfile import foreign_to_agent, load_config
from edgefleet.agent.logsetup import LogFormat
from edgefleet.agent.wire import PreprocessSpec, TrialPolicy

ENV_PREFIX = "EDGEFLEET_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), defer_build=True)


class ModelSection(Section):
    path: Path | None = None
    name: str | None = None  # defaults to the file's stem
    version: int = 0
    task: Literal["classification", "detection", "other"] = "other"
    labels: Path | list[str] | None = None
    preprocess: PreprocessSpec | None = None


class DelegateSpec(Section):
    """An external TFLite delegate (Arm NN, GPU, vendor NPUs) loaded by library path."""

    name: str
    library: str
    options: dict[str, str] = Field(default_factory=dict)


class RuntimeSection(Section):
    prefer: Literal["auto", "litert", "tflite", "onnxruntime", "torch", "executorch"] = "auto"
    delegate: str = "auto"  # auto | none | xnnpack | edgetpu | <external delegate name> | <ORT provider>
    threads: int = Field(default=0, ge=0)  # 0: one per physical core
    autotune: bool = True
    external_delegates: list[DelegateSpec] = Field(default_factory=list)
    provider_options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # ORT provider -> options


class SourceSection(Section):
    kind: Literal["none", "camera", "video", "stream", "images", "synthetic"] = "none"
    uri: str | None = None
    fps: float = Field(default=10.0, gt=0)
    loop: bool = True  # replay a video file when it ends
    gain: float = Field(default=1.0, gt=0, le=4.0)  # synthetic source only: pixel values times this (< 1: darker)
    reconnect_max_s: float = Field(default=30.0, gt=0)  # cap of the reopen backoff
    stall_s: float = Field(default=30.0, gt=0)  # an inference running longer makes the agent unhealthy


class ApiSection(Section):
    listen: str | None = "127.0.0.1:8500"
    max_body_mb: float = Field(default=16.0, gt=0)
    # Host header values accepted besides loopback names and the listen host (DNS rebinding: 421 otherwise)
    allowed_hosts: list[str] = Field(default_factory=list)
    token: str | None = None  # when set, every request needs "Authorization: Bearer <token>"
    token_file: Path | None = None  # ... the token read from this file's first line instead
    header_timeout_s: float = Field(default=10.0, gt=0)  # request line + headers within this, or the connection is cut
    body_timeout_s: float = Field(default=30.0, gt=0)  # a request body within this
    max_connections: int = Field(default=512, ge=1)  # threads, one a connection; beyond them: 503 at once

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8500")
        return value


class MqttSection(Section):
    enabled: bool = True
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    tls: bool = False
    ca_certs: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = Field(default=30, ge=5)
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    reconnect_min_s: float = Field(default=1.0, gt=0)  # backoff base; delays are full-jittered
    reconnect_max_s: float = Field(default=60.0, gt=0)  # backoff cap
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_inflight: int = Field(default=64, ge=1, le=65535)  # QoS 1 messages awaiting PUBACK


class TelemetrySection(Section):
    interval_s: float = Field(default=10.0, gt=0)
    spool_max_mb: float = Field(default=64.0, gt=0)
    spool_max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    spool_file: str = "telemetry-spool.db"  # under state_dir


class ResultsSection(Section):
    mqtt: bool = False
    max_per_s: float = Field(default=2.0, gt=0)
    file: Path | None = None
    file_max_mb: float = Field(default=16.0, gt=0)
    file_keep: int = Field(default=3, ge=1)


class ServerSection(Section):
    url: str | None = None
    token: str | None = None  # per-device token; obtained by enrollment when absent
    enrollment_token: str | None = None
    poll_interval_s: float = Field(default=60.0, gt=0)
    # a check_update pushed by the server (or asked for locally) starts a check at most once per this; the
    # ones arriving meanwhile, or while a check runs, are coalesced into the next one
    check_min_interval_s: float = Field(default=5.0, ge=0, le=3600)
    public_key: Path | None = None  # a bare key: root of trust version 0 (docs/ota.md "Root of trust")
    root: Path | None = None  # a signed root (the server's trust/root/N.root.json); preferred over public_key
    device_class: str | None = None  # None: derived from the hardware probe
    tags: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=30.0, gt=0)


class UpdateSection(Section):
    trial: TrialPolicy = Field(default_factory=TrialPolicy)
    max_attempts: int = Field(default=3, ge=1)  # crash-loop breaker for one target version
    min_free_mb: float = Field(default=50.0, ge=0)
    stall_timeout_s: float = Field(default=30.0, gt=0)  # no byte for this long: drop the connection, resume later
    download_timeout_s: float = Field(default=600.0, gt=0)  # one download attempt; the partial file is kept
    retry_backoff_s: float = Field(default=5.0, gt=0)  # first retry of a broken download; doubles up to the poll
    retry_failed_s: float = Field(default=3600.0, ge=0)  # a target that failed (not rejected) is tried again after
    probe_timeout_s: float = Field(default=120.0, gt=0)  # the test-load in a child process
    warmup_runs: int = Field(default=3, ge=0)  # synthetic inferences on the new model before the swap


class DriftSection(Section):
    enabled: bool = True
    every: int = Field(default=5, ge=1)  # bin one inference in N
    window: int = Field(default=1000, ge=10)
    threshold: float = Field(default=0.25, gt=0)  # max PSI above this (and significant): drifted
    min_samples: int = Field(default=100, ge=1)
    # chance that a healthy device's report alarms (all statistics together): sets the PSI a window of its size
    # must exceed besides `threshold`
    false_alarm_rate: float = Field(default=0.001, gt=0, lt=0.5)
    alarm_on_synthetic: bool = False  # alarm on a reference profile made from synthetic inputs too
    profile: Path | None = None  # reference profile JSON for a model from `model.path` (updates bring their own)


class ShadowSection(Section):
    timeout_s: float = Field(default=600.0, gt=0)  # no verdict by then: the candidate is rejected
    threads: int = Field(default=1, ge=1)  # runtime threads of the candidate while it is shadowed


class SamplesSection(Section):
    enabled: bool = False  # keep a few downscaled inputs for ground truth; uploaded only when asked
    max_count: int = Field(default=200, ge=1)
    max_mb: float = Field(default=8.0, gt=0)
    per_hour: int = Field(default=60, ge=1)
    max_side: int = Field(default=160, ge=16)
    grayscale: bool = False


class QualitySection(Section):
    drift: DriftSection = Field(default_factory=DriftSection)
    shadow: ShadowSection = Field(default_factory=ShadowSection)
    samples: SamplesSection = Field(default_factory=SamplesSection)


class LogSection(Section):
    format: LogFormat = "auto"  # auto: journal lines under systemd, text otherwise; json: one object per line


class AgentConfig(Section):
    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    state_dir: Path = Path("/var/lib/edgefleet")
    model: ModelSection = Field(default_factory=ModelSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    source: SourceSection = Field(default_factory=SourceSection)
    api: ApiSection = Field(default_factory=ApiSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection)
    results: ResultsSection = Field(default_factory=ResultsSection)
    server: ServerSection = Field(default_factory=ServerSection)
    update: UpdateSection = Field(default_factory=UpdateSection)
    quality: QualitySection = Field(default_factory=QualitySection)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log: LogSection = Field(default_factory=LogSection)


def load_agent_config(path: str | Path | None, environ: dict[str, str] | None = None) -> AgentConfig:
    return load_config(AgentConfig, path, env_prefix=ENV_PREFIX, environ=environ, foreign=foreign_to_agent)
