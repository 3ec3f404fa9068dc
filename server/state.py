"""Everything a running server holds: config, database, artifact store, signer, jobs, ingestion."""

from __future__ import annotations

from dataclasses import dataclass

from server.config import ServerConfig
from server.db import Database
from server.ingest import Ingestor
from server.jobs import JobRunner
from server.leases import Leases
from server.manifests import ManifestService, Signer
from server.push import Pusher
from server.reports import ReportWriter
from server.storage import ArtifactStore


def public_url_of(config: ServerConfig) -> str:
    return (config.public_url or f"http://{config.listen}").rstrip("/")


@dataclass
class ServerState:
    config: ServerConfig
    db: Database
    store: ArtifactStore
    signer: Signer
    manifests: ManifestService
    jobs: JobRunner
    reports: ReportWriter
    leases: Leases
    replica_id: str
    ingestor: Ingestor | None = None
    pusher: Pusher | None = None  # check_update to a wave's devices (server/push.py); None: MQTT off
