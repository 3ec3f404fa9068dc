"""Everything a running server holds: config, database, artifact store, signer, jobs, ingestion."""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.server.config import ServerConfig
from edgefleet.server.db import Database
from edgefleet.server.ingest import Ingestor
from edgefleet.server.jobs import JobRunner
from edgefleet.server.leases import Leases
from edgefleet.server.manifests import ManifestService, Signer
from edgefleet.server.offer_writer import OfferWriter
from edgefleet.server.push import Pusher
from edgefleet.server.reports import ReportWriter
from edgefleet.server.storage import ArtifactStore


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
    offers: OfferWriter  # download offers of check-ins, written in batches (server/offer_writer.py)
    leases: Leases
    replica_id: str
    ingestor: Ingestor | None = None
    pusher: Pusher | None = None  # check_update to a wave's devices (server/push.py); None: MQTT off
