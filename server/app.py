"""The update server's FastAPI application: ``create_app(config)``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from server import dashboard, openapi, rollouts, sandbox
from server.api import errors
from server.api.routes import artifacts, devices, enroll, health, jobs, models, trust
from server.api.routes import quality as quality_routes
from server.api.routes import rollouts as rollout_routes
from server.config import ServerConfig
from server.crud import jobs as job_crud
from server.crud.telemetry import downsample_and_expire
from server.db import Database, migrate
from server.housekeeping import Collected, collect
from server.httpmetrics import HttpGuardCollector
from server.ingest import Ingestor
from server.jobs import JobRunner
from server.limits import BodyLimits
from server.manifests import ManifestService, Signer
from server.metrics import install as install_metrics
from server.reports import ReportWriter
from server.state import ServerState, public_url_of
from server.storage import make_store

log = logging.getLogger("edgefleet.server")
EVAL_DUTY = 9.0  # wait at least this many times the last rollout evaluation before the next one


class Background:
    """Rollout evaluation every ``rollout_tick_s`` and telemetry retention every ``retention_interval_s``."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="edgefleet-background", daemon=True)

    def _loop(self) -> None:
        config = self.state.config
        next_retention = time.monotonic() + config.retention_interval_s
        pause = config.rollout_tick_s
        while not self.stop_event.wait(pause):
            started = time.monotonic()
            try:
                rollouts.tick(self.state.db, now=time.time())
            except Exception:
                log.exception("rollout evaluation failed")
            # evaluation grows with the devices given a version so far: keep it under ~1/(1+EVAL_DUTY)
            # of the process however large the fleet, so check-ins and reports keep their share
            pause = max(config.rollout_tick_s, EVAL_DUTY * (time.monotonic() - started))
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + config.retention_interval_s
                self.retention()
                self.collect()

    def retention(self) -> tuple[int, int]:
        section = self.state.config.telemetry
        now = time.time()
        with self.state.db.session() as session:
            return downsample_and_expire(session, downsample_before=now - section.downsample_after_hours * 3600,
                                         expire_before=now - section.retention_days * 86400)

    def collect(self) -> Collected | None:
        """Patches no manifest can offer and samples past their retention or size cap (server/housekeeping.py)."""
        try:
            return collect(self.state.db, self.state.store, self.state.config.samples, now=time.time())
        except Exception:
            log.exception("garbage collection failed")
            return None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


def build_state(config: ServerConfig) -> ServerState:
    # every HTTP thread, plus the ingest writer, rollout loop, job workers and retention
    db = Database(config.database_url, connections=config.http_threads + config.job_workers + 8)
    signer = Signer.from_config(config)
    public_url = public_url_of(config)
    return ServerState(config=config, db=db, store=make_store(config.storage), signer=signer,
                       manifests=ManifestService(config, signer, public_url),
                       jobs=JobRunner(db, workers=config.job_workers), reports=ReportWriter(db))


def create_app(config: ServerConfig, *, background: bool = True) -> FastAPI:
    state = build_state(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = config.http_threads
        sandbox.reopen()
        migrate(state.db.engine)
        with state.db.session() as session:
            job_crud.fail_interrupted(session)
        state.reports.start()
        tasks = Background(state)
        app.state.background = tasks
        if config.mqtt.enabled:
            state.ingestor = Ingestor(state.db, config.mqtt, config.telemetry, on_batch=metrics.observe_batch)
            state.ingestor.start()
        if background:
            tasks.start()
        try:
            yield
        finally:
            sandbox.kill_all()  # a model being inspected or optimized must not hold the shutdown
            if background:
                tasks.stop()
            if state.ingestor is not None:
                state.ingestor.stop()
            state.jobs.shutdown()
            state.reports.stop()
            state.db.dispose()

    app = FastAPIOffline(title="edgefleet update server", version="1", lifespan=lifespan,
                         description=openapi.DESCRIPTION, swagger_ui_parameters={"validatorUrl": None})
    openapi.install(app)
    app.state.edgefleet = state
    for module in (health, enroll, devices, artifacts, models, jobs, rollout_routes, quality_routes, trust):
        app.include_router(module.router)
    app.include_router(dashboard.router)
    metrics = install_metrics(app, state)
    metrics.registry.register(HttpGuardCollector())
    app.add_middleware(BodyLimits, http=config.http,  # outermost: before any parsing
                       upload_bytes=int(config.max_upload_mb * 1024 * 1024))

    errors.install(app)
    return app
