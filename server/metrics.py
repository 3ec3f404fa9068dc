"""``/metrics`` in the Prometheus text format, from a registry of the app's own (never the global one).

- Fleet state (devices online/offline, devices per model version, rollout state and device counts) is read
  from the database at scrape time by a collector, so every replica reports the same fleet.
- Check-ins (``GET /v1/devices/{id}/manifest``) are counted and timed by a pure ASGI middleware.
- Ingestion counters come from the ingestor's ``IngestStats``; batch write latency from its ``on_batch`` hook;
  update-report counters from the report writer.
- The fleet's inference latency histogram by model version comes from the histograms the ingestor wrote
  (``server/latency_metrics.py``: its ``le`` boundaries and how the 2 % contract buckets map onto them).

``/metrics`` takes ``Authorization: Bearer <metrics_token or admin_token>`` (401 otherwise).
"""

from __future__ import annotations

import hmac
import platform
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from importlib import metadata
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgefleet.server.api.deps import is_admin
from edgefleet.server.api.errors import problems
from edgefleet.server.crud import NotFound, fleet, registry
from edgefleet.server.state import ServerState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROLLOUT_STATES = ("running", "paused", "completed", "aborted")
FINISHED_VISIBLE_S = 24 * 3600.0
CHECKIN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _version() -> str:
    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:
        return "unknown"


class FleetCollector(Collector):
    """Gauges read from the database and counters read from the ingestor, at every scrape."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: without this the registry collects at registration, which reads the database
        before the migrations ran (a server on a fresh database did not start)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from self._fleet()
        yield from self._ingest()
        yield from self._reports()
        yield from self._leases()

    def _leases(self) -> Iterator[Metric]:
        held = GaugeMetricFamily("edgefleet_lease_held", "1 for each singleton loop this replica runs now",
                                 labels=["lease"])
        for name, holds in self.state.leases.holding().items():
            held.add_metric([name], 1.0 if holds else 0.0)
        yield held

    def _reports(self) -> Iterator[Metric]:
        writer = self.state.reports
        yield _single(CounterMetricFamily, "edgefleet_reports_written", "Update reports committed", writer.written)
        yield _single(CounterMetricFamily, "edgefleet_report_batches", "Transactions the reports were committed in",
                      writer.batches)
        yield _single(GaugeMetricFamily, "edgefleet_report_queue_depth", "Update reports waiting for the writer",
                      writer.queue_depth())
        offers = self.state.offers
        yield _single(CounterMetricFamily, "edgefleet_offers_written", "Download offers of check-ins stored",
                      offers.written)
        yield _single(CounterMetricFamily, "edgefleet_offers_failed",
                      "Download offers not stored (a database error; downloads are judged by the manifest of now)",
                      offers.failed)
        yield _single(GaugeMetricFamily, "edgefleet_offer_queue_depth", "Download offers waiting for the offer writer",
                      offers.pending())

    def _fleet(self) -> Iterator[Metric]:
        started = time.perf_counter()
        with self.state.db.session() as session:
            online, offline = fleet.online_counts(session)
            versions = fleet.versions_in_field(session)
            rollouts = fleet.visible_rollouts(session, finished_since=time.time() - FINISHED_VISIBLE_S)
            states = fleet.rollout_device_states(session, rollout_ids=[r.id for r in rollouts])
            names = {r.id: fleet_version_label(session, r.version_id) for r in rollouts}
        devices = GaugeMetricFamily("edgefleet_devices", "Devices by connection state", labels=["state"])
        devices.add_metric(["online"], online)
        devices.add_metric(["offline"], offline)
        yield devices
        per_version = GaugeMetricFamily("edgefleet_devices_by_model_version",
                                        "Devices by the model and version they report running",
                                        labels=["model", "version", "online"])
        for model, version, count, up in versions:
            version_label = "" if version is None else str(version)
            per_version.add_metric([model, version_label, "true"], up)
            per_version.add_metric([model, version_label, "false"], count - up)
        yield per_version
        state = GaugeMetricFamily("edgefleet_rollout_state",
                                  "1 for the state a rollout is in (running, paused, completed, aborted)",
                                  labels=["rollout", "model", "version", "state"])
        wave = GaugeMetricFamily("edgefleet_rollout_current_wave", "Index of the wave a rollout is in (0-based)",
                                 labels=["rollout"])
        members = GaugeMetricFamily("edgefleet_rollout_devices", "Devices of a rollout by their state",
                                    labels=["rollout", "state"])
        for rollout in rollouts:
            model_label, version_str = names[rollout.id]
            for name in ROLLOUT_STATES:
                current = 1.0 if rollout.state == name else 0.0
                state.add_metric([str(rollout.id), model_label, version_str, name], current)
            wave.add_metric([str(rollout.id)], rollout.current_wave)
            for device_state, count in sorted(states.get(rollout.id, {}).items()):
                members.add_metric([str(rollout.id), device_state], count)
        yield state
        yield wave
        yield members
        yield _single(GaugeMetricFamily, "edgefleet_fleet_scrape_seconds",
                      "Time to read the fleet state for this scrape", time.perf_counter() - started)

    def _ingest(self) -> Iterator[Metric]:
        ingestor = self.state.ingestor
        yield _single(GaugeMetricFamily, "edgefleet_mqtt_connected", "1 while the ingestor is connected to the broker",
                      1.0 if ingestor is not None and ingestor.stats.connected else 0.0)
        if ingestor is None:
            return
        stats = ingestor.stats
        yield _single(CounterMetricFamily, "edgefleet_ingest_received", "MQTT messages received by the ingestor",
                      stats.received)
        by_kind = CounterMetricFamily("edgefleet_ingest_messages", "Valid messages ingested, by topic leaf",
                                      labels=["kind"])
        for kind, count in sorted(dict(stats.by_kind).items()):
            by_kind.add_metric([kind], count)
        yield by_kind
        yield _single(CounterMetricFamily, "edgefleet_ingest_invalid", "Messages refused, all reasons", stats.invalid)
        rejected = CounterMetricFamily("edgefleet_ingest_rejected", "Device messages refused and not stored, by reason",
                                       labels=["reason"])
        for reason, count in sorted(dict(stats.rejections.by_reason).items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield _single(CounterMetricFamily, "edgefleet_ingest_ts_replaced",
                      "Stored messages whose timestamp was out of range and replaced by the receive time",
                      stats.ts_replaced)
        yield _single(CounterMetricFamily, "edgefleet_ingest_written", "Rows handed to the database (before dedup)",
                      stats.written)
        yield _single(CounterMetricFamily, "edgefleet_ingest_batches", "Batches written", stats.batches)
        yield _single(GaugeMetricFamily, "edgefleet_ingest_queue_depth", "Messages waiting for the batch writer",
                      ingestor.writer.queue.qsize())
        yield from stats.latency.collect()


def _single(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, documentation: str,
            value: float) -> Metric:
    """A metric family with one unlabelled sample."""
    family = kind(name, documentation)
    family.add_metric([], value)
    return family


def fleet_version_label(session: Any, version_id: int) -> tuple[str, str]:
    try:
        model, version = registry.version_by_id(session, version_id=version_id)
    except NotFound:
        return "", ""
    return model.name, str(version.version)


class Metrics:
    """The app's registry and the instruments the server feeds."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=True)
        self.checkins = Counter("edgefleet_checkin_requests", "Desired-state check-ins by HTTP status",
                                ["code"], registry=self.registry)
        self.checkin_seconds = Histogram("edgefleet_checkin_duration_seconds", "Check-in latency in the server",
                                         buckets=CHECKIN_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("edgefleet_ingest_batch_duration_seconds",
                                       "Time to validate and write one ingestion batch", buckets=BATCH_BUCKETS,
                                       registry=self.registry)
        self.batch_messages = Counter("edgefleet_ingest_batch_messages", "Messages in the written batches",
                                      registry=self.registry)
        build = GaugeMetricFamily("edgefleet_build_info", "Version of this server", labels=["version", "python"])
        build.add_metric([_version(), platform.python_version()], 1.0)
        self.registry.register(_Static([build]))
        self.registry.register(FleetCollector(state))

    def observe_batch(self, messages: int, seconds: float) -> None:
        self.batch_messages.inc(messages)
        self.batch_seconds.observe(seconds)

    def observe_checkin(self, status: int, seconds: float) -> None:
        self.checkins.labels(str(status)).inc()
        self.checkin_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Static(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def is_checkin(path: str) -> bool:
    return path.startswith("/v1/devices/") and path.endswith("/manifest") and path.count("/") == 4


class CheckinTimer:
    """Pure ASGI middleware (no per-request task or body buffering): times manifest requests only."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_checkin(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_checkin(status, time.perf_counter() - started)


def _authorized(request: Request, state: ServerState) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    metrics_token = state.config.metrics_token
    if metrics_token and hmac.compare_digest(token.encode(), str(metrics_token).encode()):
        return True
    return is_admin(state, token)


def install(app: FastAPI, state: ServerState) -> Metrics:
    """Add ``GET /metrics`` and the check-in middleware to ``app``; return the instruments (its
    ``observe_batch`` is the ingestor's ``on_batch`` hook)."""
    metrics = Metrics(state)
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", response_class=PlainTextResponse, operation_id="metrics.scrape", responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **problems(401, s401="no metrics or admin bearer token")})
    def scrape(request: Request) -> Response:
        if not _authorized(request, state):
            raise HTTPException(401, "a metrics or admin bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
    app.add_middleware(CheckinTimer, metrics=metrics)  # type: ignore[arg-type]
    app.state.metrics = metrics
    return metrics


__all__ = ["CheckinTimer", "Metrics", "install", "is_checkin"]
