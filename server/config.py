"""The update server's configuration (configs/server.yaml)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.configfile import load_config

ENV_PREFIX = "EDGEFLEET_SERVER_"


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


class ServerConfig(Section):
    listen: str = "127.0.0.1:8080"
    public_url: str | None = None  # how devices reach this server; defaults to http://{listen}
    database_url: str = "sqlite:////var/lib/edgefleet-server/edgefleet.db"
    storage: StorageSection = Field(default_factory=StorageSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    signing_key: Path = Path("/etc/edgefleet-server/signing.key")
    admin_token: str | None = None
    metrics_token: str | None = None  # bearer token Prometheus scrapes /metrics with (admin_token works too)
    enrollment_token: str | None = None
    manifest_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    max_upload_mb: float = Field(default=512.0, gt=0)
    device_classes: dict[str, list[str]] = Field(default_factory=dict)  # class -> variants to make on upload
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection)
    log_level: str = "INFO"
    rollout_tick_s: float = Field(default=1.0, gt=0)  # how often running rollouts are evaluated
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


def replica_id_of(config: ServerConfig) -> str:
    if config.replica_id:
        return config.replica_id
    port = config.listen.rpartition(":")[2]
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{socket.gethostname()}-{port}")[:64]


def load_server_config(path: str | Path | None, environ: dict[str, str] | None = None) -> ServerConfig:
    return load_config(ServerConfig, path, env_prefix=ENV_PREFIX, environ=environ)
