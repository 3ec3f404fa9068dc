"""The update server's configuration (configs/server.yaml)."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.agent.configfile import SERVER_ENV_PREFIX, foreign_to_server, load_config
from edgefleet.agent.logsetup import LogFormat

ENV_PREFIX = SERVER_ENV_PREFIX


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    shared_subscription: bool | None = None  # None: use $share/ when the broker speaks MQTT 5
    # a persistent session (clean start off) under the replica's stable client id: what the broker holds for
    # this replica while it is down is delivered when it is back (docs/deploying.md); 0: a clean session
    session_expiry_s: int = Field(default=3600, ge=0, le=2**32 - 1)
    receive_maximum: int = Field(default=65535, ge=1, le=65535)  # QoS 1 messages in flight to this replica


class StorageSection(Section):
    kind: str = "local"  # local | s3
    path: Path = Path("/var/lib/edgefleet-server/artifacts")  # with s3: only for temporary files (path/tmp)
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    prefix: str = ""


class TelemetrySection(Section):
    retention_days: float = Field(default=30.0, gt=0)
    downsample_after_hours: float = Field(default=24.0, gt=0)
    batch_max: int = Field(default=500, ge=1)
    batch_interval_s: float = Field(default=0.5, gt=0)
    max_message_kb: int = Field(default=256, ge=1, le=65536)  # larger device messages are refused (the broker's 256)
    future_skew_s: float = Field(default=300.0, ge=0)  # a device ts later than this past receipt is replaced


class EnrollmentSection(Section):
    # open: a new id enrolls with the shared enrollment_token; approve: it then waits for the operator
    mode: Literal["open", "approve"] = "open"
    token_ttl_h: float = Field(default=72.0, gt=0)  # lifetime of a one-time per-device enrollment token


class LogSection(Section):
    format: LogFormat = "auto"  # auto: journal lines under systemd, text otherwise; json: one object per line


class HttpSection(Section):
    """What one HTTP client may hold of the server: time, connections and buffered bytes."""

    header_timeout_s: float = Field(default=10.0, gt=0)  # request line and headers must arrive within this
    body_timeout_s: float = Field(default=30.0, gt=0)  # a JSON/form body must arrive within this (upload: per chunk)
    keep_alive_s: float = Field(default=5.0, gt=0)  # an idle keep-alive connection is closed after this
    max_connections: int = Field(default=1024, ge=1)  # open connections and requests; beyond them: 503
    max_header_kb: int = Field(default=64, ge=1)  # request line + headers; beyond: 431 and the connection closes
    max_json_depth: int = Field(default=32, ge=2)  # nesting of arrays/objects in a JSON body; beyond: 400
    max_buffered_mb: float = Field(default=256.0, gt=0)  # bodies held in memory by all requests together; then 503
    shutdown_timeout_s: float = Field(default=5.0, gt=0)  # after SIGTERM, in-flight requests get this long


class SandboxSection(Section):
    """Uploaded models are loaded and run only in child processes bounded by these."""

    inspect_timeout_s: float = Field(default=45.0, gt=0)  # format, signature and drift profile of one upload
    variants_timeout_s: float = Field(default=1800.0, gt=0)  # one variants job (all recipes of a target)
    delta_cpu_s: float = Field(default=300.0, gt=0)  # CPU time of one bsdiff
    delta_memory_mb: int = Field(default=4096, ge=64)  # address space of a bsdiff child (~12x the larger file)
    memory_mb: int = Field(default=4096, ge=256)  # address space of the other children (inspection, variants)


class SamplesSection(Section):
    """Ground-truth samples: accepted only after an ``upload_samples`` command, and garbage-collected."""

    per_command: int = Field(default=500, ge=1)  # samples one upload_samples command lets a device send
    window_s: float = Field(default=3600.0, gt=0)  # ... within this long after the command
    retention_days: float = Field(default=90.0, gt=0)
    max_total_mb: float = Field(default=2048.0, gt=0)  # all sample images; the oldest go first (unlabelled first)


class RolloutsSection(Section):
    """Push (server/push.py): check_update to a wave's devices when it starts, spread so they do not stampede."""

    push_spread_s: float = Field(default=10.0, ge=0, le=3600)  # a wave's pushes go out evenly over this ...
    # ... and never faster than this (big waves). A device's update costs one server process ~10-25 ms of CPU
    # (check-in with its signed manifest, download, 4 reports, 6 MQTT messages: fleet_sim's
    # rollout.server_cpu_ms_per_update), and a process has one core: 50/s keeps a replica at about half of it,
    # so check-ins stay fast; set it to about 50 x the replicas behind the load balancer
    push_rate_per_s: float = Field(default=50.0, gt=0, le=100_000)
    # ... and only while fewer than this many pushed devices, online, have not fetched the update yet (check-in
    # and download still ahead of them): a server slower than the rate holds the pushes instead of queueing
    # them in its sockets (0: no bound). A pushed device leaves the count once its report says it has the
    # artifact, it goes offline, or this long after its push
    push_max_in_flight: int = Field(default=100, ge=0, le=1_000_000)
    push_in_flight_timeout_s: float = Field(default=60.0, gt=0, le=3600)


class ServerConfig(Section):
    listen: str = "127.0.0.1:8080"
    public_url: str | None = None  # how devices reach this server; defaults to http://{listen}
    database_url: str = "sqlite:////var/lib/edgefleet-server/edgefleet.db"
    storage: StorageSection = Field(default_factory=StorageSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    signing_key: Path = Path("/etc/edgefleet-server/signing.key")  # the online key (server/trust.py)
    trust_dir: Path | None = None  # the root chain (trust/root/N.root.json); None: trust/ beside signing_key
    legacy_manifests: bool = True  # sign the legacy form for agents that do not ask for the RFC 8785 one
    admin_token: str | None = None
    metrics_token: str | None = None  # bearer token Prometheus scrapes /metrics with (admin_token works too)
    enrollment_token: str | None = None
    enrollment: EnrollmentSection = Field(default_factory=EnrollmentSection)
    manifest_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    max_upload_mb: float = Field(default=512.0, gt=0)
    device_classes: dict[str, list[str]] = Field(default_factory=dict)  # class -> variants to make on upload
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection)
    log_level: str = "INFO"
    log: LogSection = Field(default_factory=LogSection)
    rollout_tick_s: float = Field(default=1.0, gt=0)  # how often running rollouts are evaluated
    rollouts: RolloutsSection = Field(default_factory=RolloutsSection)
    job_workers: int = Field(default=1, ge=1)  # threads building variants and deltas
    # Threads serving sync routes. The database pool is sized above this, so a request thread never
    # waits for a connection while the requests holding them wait for a thread (a pool deadlock).
    http_threads: int = Field(default=32, ge=1, le=1024)
    retention_interval_s: float = Field(default=3600.0, gt=0)  # how often telemetry is downsampled/expired
    # Scale-out (docs/deploying.md). replica_id names this process in leases, job claims and its MQTT client
    # id; it must be unique among the replicas and stable across restarts (default: host name and port).
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    lease_ttl_s: float = Field(default=5.0, ge=1.0, le=300.0)  # a dead leader is replaced within this
    gc_interval_s: float = Field(default=3600.0, gt=0)  # how often unreferenced artifacts are deleted
    gc_grace_s: float = Field(default=24 * 3600.0, ge=0)  # an artifact younger than this is never deleted
    http: HttpSection = Field(default_factory=HttpSection)
    sandbox: SandboxSection = Field(default_factory=SandboxSection)
    samples: SamplesSection = Field(default_factory=SamplesSection)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8080")
        return value


def replica_id_of(config: ServerConfig) -> str:
    if config.replica_id:
        return config.replica_id
    port = config.listen.rpartition(":")[2]
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{socket.gethostname()}-{port}")[:64]


def load_server_config(path: str | Path | None, environ: dict[str, str] | None = None) -> ServerConfig:
    return load_config(ServerConfig, path, env_prefix=ENV_PREFIX, environ=environ, foreign=foreign_to_server)
