"""The update server's FastAPI application: ``create_app(config)``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from edgefleet.server import dashboard, openapi, rollouts, sandbox
from edgefleet.server.api import errors
from edgefleet.server.api.routes import artifacts, devices, enroll, health, jobs, latency, models, trust
from edgefleet.server.api.routes import quality as quality_routes
from edgefleet.server.api.routes import rollouts as rollout_routes
from edgefleet.server.artifact_gc import Collected, collect
from edgefleet.server.config import ServerConfig, replica_id_of
from edgefleet.server.crud import jobs as job_crud
from edgefleet.server.crud import rollouts as rollout_crud
from edgefleet.server.crud.telemetry import downsample_and_expire
from edgefleet.server.db import Database, migrate
from edgefleet.server.deltas import KIND as DELTAS_JOB
from edgefleet.server.deltas import PAIR_KIND, deltas_job, pair_job
from edgefleet.server.housekeeping import collect as housekeep
from edgefleet.server.httpmetrics import HttpGuardCollector
from edgefleet.server.ingest import Ingestor
from edgefleet.server.jobs import JobRunner
from edgefleet.server.latency_rollup import fold_and_expire as fold_latency
from edgefleet.server.leases import GC, RETENTION, ROLLOUTS, Leases
from edgefleet.server.limits import BodyLimits
from edgefleet.server.manifests import ManifestService, Signer
from edgefleet.server.metrics import install as install_metrics
from edgefleet.server.offer_writer import OfferWriter
from edgefleet.server.push import NotFetched, PushCollector, Pusher, publisher_of
from edgefleet.server.reports import ReportWriter
from edgefleet.server.state import ServerState, public_url_of
from edgefleet.server.storage import make_store
from edgefleet.server.variants import KIND as VARIANTS_JOB
from edgefleet.server.variants import variants_job

log = logging.getLogger("edgefleet.server")
EVAL_DUTY = 9.0  # wait at least this many times the last rollout evaluation before the next one


class Background:
    """The singleton loops, each run only while this replica holds its lease (server/leases.py): rollout
    evaluation every ``rollout_tick_s``, telemetry retention every ``retention_interval_s``, artifact garbage
    collection every ``gc_interval_s``."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._rollout_loop, name="edgefleet-rollouts", daemon=True),
                        threading.Thread(target=self._periodic, name="edgefleet-retention", daemon=True,
                                         args=(RETENTION, state.config.retention_interval_s, self.retention)),
                        threading.Thread(target=self._periodic, name="edgefleet-gc", daemon=True,
                                         args=(GC, state.config.gc_interval_s, self.collect_garbage)),
                        threading.Thread(target=self._periodic, name="edgefleet-push-again", daemon=True,
                                         args=(ROLLOUTS, max(1.0, state.config.rollouts.push_in_flight_timeout_s / 4),
                                               self.push_again))]

    def _rollout_loop(self) -> None:
        config = self.state.config
        pause = config.rollout_tick_s
        while not self.stop_event.wait(pause):
            if not self.state.leases.held(ROLLOUTS):
                pause = config.rollout_tick_s
                continue
            started = time.monotonic()
            try:
                rollouts.tick(self.state.db, now=time.time())
            except Exception:
                log.exception("rollout evaluation failed")
            # evaluation grows with the devices given a version so far: keep it under ~1/(1+EVAL_DUTY)
            # of the process however large the fleet, so check-ins and reports keep their share
            pause = max(config.rollout_tick_s, EVAL_DUTY * (time.monotonic() - started))

    def _periodic(self, lease: str, interval_s: float, work: Callable[[], object]) -> None:
        next_run = time.monotonic() + interval_s
        while not self.stop_event.wait(min(1.0, interval_s)):
            if time.monotonic() < next_run or not self.state.leases.held(lease):
                continue
            next_run = time.monotonic() + interval_s
            try:
                work()
            except Exception:
                log.exception("%s failed", lease)

    def push_again(self) -> int:
        """Push once more the devices of the running rollouts that have not fetched their update in time."""
        pusher = self.state.pusher
        if pusher is None:
            return 0
        with self.state.db.session() as session:
            stragglers = rollout_crud.unfetched_stragglers(
                session, assigned_before=time.time() - self.state.config.rollouts.push_in_flight_timeout_s)
        return pusher.push_again(stragglers)

    def retention(self) -> tuple[int, int]:
        section = self.state.config.telemetry
        now = time.time()
        downsample_before = now - section.downsample_after_hours * 3600
        expire_before = now - section.retention_days * 86400
        with self.state.db.session() as session:
            fold_latency(session, downsample_before=downsample_before, expire_before=expire_before)
        with self.state.db.session() as session:
            return downsample_and_expire(session, downsample_before=downsample_before, expire_before=expire_before)

    def collect_garbage(self) -> tuple[object, Collected]:
        """Patches no manifest can offer and samples past their retention or size cap (server/housekeeping.py),
        then every artifact no row names any more (server/artifact_gc.py)."""
        swept = housekeep(self.state.db, self.state.store, self.state.config.samples, now=time.time())
        return swept, collect(self.state.db, self.state.store, grace_s=self.state.config.gc_grace_s)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=10)


def build_state(config: ServerConfig) -> ServerState:
    # every HTTP thread, plus the ingest writer, rollout loop, job workers, leases and retention
    db = Database(config.database_url, connections=config.http_threads + config.job_workers + 10)
    signer = Signer.from_config(config)
    public_url = public_url_of(config)
    replica = replica_id_of(config)
    store = make_store(config.storage)
    job_runner = JobRunner(db, holder=replica, workers=config.job_workers, claim_ttl_s=3 * config.lease_ttl_s)
    job_runner.register(VARIANTS_JOB, variants_job(db, store, config))
    job_runner.register(DELTAS_JOB, deltas_job(db, store, config))
    job_runner.register(PAIR_KIND, pair_job(db, store, config))
    return ServerState(config=config, db=db, store=store, signer=signer,
                       manifests=ManifestService(config, signer, public_url), jobs=job_runner,
                       reports=ReportWriter(db), offers=OfferWriter(db),
                       leases=Leases(db, replica, ttl_s=config.lease_ttl_s), replica_id=replica)


def not_fetched_of(state: ServerState) -> NotFetched:
    def not_fetched(pushed: dict[int, list[str]]) -> set[tuple[int, str]]:
        with state.db.session() as session:
            return rollout_crud.not_fetched(session, pushed=pushed)

    return not_fetched


def create_app(config: ServerConfig, *, background: bool = True) -> FastAPI:
    state = build_state(config)
    pusher = Pusher(publisher_of(state), spread_s=config.rollouts.push_spread_s,
                    rate_per_s=config.rollouts.push_rate_per_s, max_in_flight=config.rollouts.push_max_in_flight,
                    in_flight_timeout_s=config.rollouts.push_in_flight_timeout_s, not_fetched=not_fetched_of(state))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = config.http_threads
        sandbox.reopen()
        migrate(state.db.engine)
        if state.db.dialect == "sqlite":  # one process owns the database: what was running was interrupted
            with state.db.session() as session:
                job_crud.expire_all_claims(session)
        state.reports.start()
        state.offers.start()
        tasks = Background(state)
        app.state.background = tasks
        if config.mqtt.enabled:
            state.ingestor = Ingestor(state.db, config.mqtt, config.telemetry, on_batch=metrics.observe_batch,
                                      client_id=f"edgefleet-server-{state.replica_id}")
            state.ingestor.start()
            state.pusher = pusher
            pusher.attach(state.db.factory)
            pusher.start()
        state.jobs.start()
        if background:
            state.leases.start()
            tasks.start()
        try:
            yield
        finally:
            sandbox.kill_all()  # a model being inspected or optimized must not hold the shutdown
            if background:
                tasks.stop()
                state.leases.stop()
            if state.pusher is not None:
                state.pusher.detach(state.db.factory)
                state.pusher.stop()
            if state.ingestor is not None:
                state.ingestor.stop()
            state.jobs.shutdown()
            state.reports.stop()
            state.offers.stop()
            state.db.dispose()

    app = FastAPIOffline(title="edgefleet update server", version="1", lifespan=lifespan,
                         description=openapi.DESCRIPTION, swagger_ui_parameters={"validatorUrl": None})
    openapi.install(app)
    app.state.edgefleet = state
    for module in (health, enroll, devices, artifacts, models, jobs, rollout_routes, quality_routes, trust, latency):
        app.include_router(module.router)
    app.include_router(dashboard.router)
    metrics = install_metrics(app, state)
    metrics.registry.register(HttpGuardCollector())
    metrics.registry.register(PushCollector(pusher))
    app.add_middleware(BodyLimits, http=config.http,  # outermost: before any parsing
                       upload_bytes=int(config.max_upload_mb * 1024 * 1024))

    errors.install(app)
    return app
