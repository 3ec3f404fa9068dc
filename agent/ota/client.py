"""UpdateClient: polls the signed manifest and drives one update through the persisted state machine.

The driver is small (mender's shape, ../shared/STYLE.md): each in-progress state has a handler of its own
(agent/ota/handlers/) that receives the saved record and returns the next transition; the driver saves
that transition (agent/ota/state.py: fsync + atomic rename) before the next handler runs, announces it
(events, reports) and loops until a terminal state or a wait:

    downloading  full artifact or bsdiff4 delta into update/partial/, resumable
    verifying    size + sha256, then a test-load in a child process (agent/ota/probe_load.py)
    installing   copy into the inactive slot, load + warm up in-process, swap between two
                 inferences, switch the active pointer
    trial        watch the new model; a breach swaps the old one back at once
    committed | rolled_back | rejected | failed

``recover()`` runs once at start-up, before the daemon loads the active slot, and puts the
pointer (and the host, if it serves already) back on a complete model; the worker thread
started by ``start()`` then resumes whatever the saved state says is left.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon.host import ModelHost
from edgefleet.agent.errors import ConfigError, EdgefleetError, Refused, SignatureError, TransportError
from edgefleet.agent.ota import accept
from edgefleet.agent.ota.clock import Clock, SystemClock
from edgefleet.agent.ota.context import Loader, UpdateContext
from edgefleet.agent.ota.enroll import hardware
from edgefleet.agent.ota.enrollment import Enrollment
from edgefleet.agent.ota.handlers import Handler, Transition, handlers
from edgefleet.agent.ota.handlers.report import Reporter, report_metrics
from edgefleet.agent.ota.handlers.rollback import restore_previous, serve_active
from edgefleet.agent.ota.roots import RootStore
from edgefleet.agent.ota.serverapi import ReportQueue, ServerApi
from edgefleet.agent.ota.slots import SlotStore
from edgefleet.agent.ota.state import EVENTS, IN_PROGRESS, TERMINAL, State, StateRecord, StateStore, Trigger, next_state
from edgefleet.agent.ota.trial import LatencyWindow
from edgefleet.agent.ota.verify import Running, Seen, authenticate, check_policy
from edgefleet.agent.wire import Command, Manifest, SignedManifest

if TYPE_CHECKING:
    from edgefleet.agent.ota.http import Session

__all__ = ["Loader", "UpdateClient"]

log = logging.getLogger(__name__)

ENDS = TERMINAL - {State.IDLE}  # entering one of these clears the partial download


class UpdateClient:
    def __init__(self, config: AgentConfig, host: ModelHost, telemetry: Any | None, loader: Loader, *,
                 session: Session | None = None, rng: random.Random | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.host = host
        self.telemetry = telemetry
        self.state_dir = Path(config.state_dir)
        self.slots = SlotStore(self.state_dir)
        update_dir = self.state_dir / "update"
        self.store = StateStore(update_dir / "state.json")
        self.reports = ReportQueue(update_dir / "reports")
        self.record = self.store.load()
        self._session = session
        self.rng = rng or random.Random()
        self.clock: Clock = clock or SystemClock()
        self.roots = RootStore(self.state_dir, config.server)
        self._stop = threading.Event()
        self.ctx = UpdateContext(
            config=config, host=host, loader=loader, http=self.http, slots=self.slots,
            partial_dir=update_dir / "partial", api=self.api,
            reporter=Reporter(telemetry, self.reports, self.api, config.device_id),
            stop=self._stop, baseline=LatencyWindow())
        host.add_observer(self.ctx.baseline)
        self.cycles = 0  # poll cycles the worker finished
        self._handlers: dict[State, Handler] | None = None  # imported at the first update: the probe
        self._api: ServerApi | None = None
        self._enrollment = Enrollment(config, self.state_dir, hardware,
                                      on_enrolled=getattr(telemetry, "announce", None))
        self._etag: str | None = None
        self._signed: SignedManifest | None = None  # the manifest behind _etag
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_s = config.update.retry_backoff_s
        if telemetry is not None:
            telemetry.on_command("check_update", self._on_check_update)

    # --- public --------------------------------------------------------------------------------

    def http(self) -> Session:
        """The HTTP session, made at the first network use: ssl is imported on the update thread at the first
        HTTPS connection, after the daemon is serving, not on its way to READY."""
        with self._lock:
            if self._session is None:
                from edgefleet.agent.ota.http import Session

                self._session = Session()
            return self._session

    @property
    def state(self) -> State:
        return self.record.state

    @property
    def loader(self) -> Loader:
        return self.ctx.loader

    @loader.setter
    def loader(self, loader: Loader) -> None:
        self.ctx.loader = loader

    @property
    def bytes_transferred(self) -> int:
        return self.ctx.bytes_transferred

    @property
    def last_error(self) -> str | None:
        return self.ctx.last_error

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgefleet-ota", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def shadow_report(self) -> dict[str, Any] | None:
        """The telemetry ``shadow`` section: the live runner's report, else the last one (None before any)."""
        runner = self.ctx.shadow
        return runner.report() if runner is not None else self.ctx.shadow_last

    def check_now(self) -> dict[str, Any]:
        """Poll at once: wake the worker when it runs, else run one cycle here."""
        if self._thread is not None and self._thread.is_alive():
            self._wake.set()
            return {"state": self.record.state.value, "queued": True}
        self.run_once()
        return {"state": self.record.state.value}

    def recover(self) -> State:
        """Start-up: map the saved state to its recovery action (see agent/ota/state.py).

        Local only (state record, slot pointer, report queue, telemetry spool): the daemon runs it before it
        loads a model and says READY; the reports it queues are sent by the worker's first cycle."""
        with self._lock, self.ctx.reporter.queue_only():
            record = self.record = self.store.load()
            if record.state in IN_PROGRESS:
                record.attempts += 1
                if record.attempts > self.config.update.max_attempts:
                    reason = f"gave up after {record.attempts} restarts in state {record.state.value}"
                    restore_previous(self.ctx, record)
                    self._enter(Transition(Trigger.CRASH_LOOP, {"reason": reason}))
                elif record.state is State.TRIAL:
                    restore_previous(self.ctx, record)
                    self._enter(Transition(Trigger.FAILED, {"reason": "the agent restarted during the trial"}))
                else:
                    if record.state is State.INSTALLING:
                        restore_previous(self.ctx, record)
                    self.store.save(record)
            serve_active(self.ctx)
            return self.record.state

    def run_once(self) -> State:
        """One cycle: flush reports, fetch the manifest, act on it, drive an update in progress."""
        with self._lock:
            self.ctx.reporter.flush()
            reply = self._enrollment.manifest(self.api(), self._etag)
            if reply.status == 200 and reply.signed is not None:
                self._consider(reply.signed)
                self._etag = reply.etag
                self._signed = reply.signed
            elif reply.status == 304 and self._signed is not None and \
                    self.record.state in (State.FAILED, State.REJECTED):
                self._consider(self._signed)  # unchanged desired state: a failed target is retried when due
            self._drive()
            return self.record.state

    def api(self) -> ServerApi:
        if self._api is None:
            server = self.config.server
            if not server.url:
                raise ConfigError("server.url is not set: no update server to poll")
            api = ServerApi(server.url, None, timeout_s=server.timeout_s, session=self.http())
            api.token = self._enrollment.token(api)
            self._api = api
        return self._api

    def running(self) -> Running:
        meta = self.host.meta
        info = self.slots.active_info()
        if meta is None:
            if info is None:
                return Running()
            return Running(info.meta.version, info.sha256, info.issued_at)
        issued = info.issued_at if info is not None and info.sha256 == meta.sha256 else None
        return Running(meta.version, meta.sha256, issued)

    # --- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        last_cycle = -math.inf
        while not self._stop.is_set():
            if self._wake.wait(delay):
                # woken (a pushed check_update): at most one check per check_min_interval_s; every wake until
                # the cycle starts is served by it, one arriving during the cycle brings exactly one more
                hold = last_cycle + self.config.server.check_min_interval_s - time.monotonic()
                if hold > 0:
                    self._stop.wait(hold)
                self._wake.clear()
            if self._stop.is_set():
                break
            last_cycle = time.monotonic()
            try:
                self.run_once()
                self.ctx.last_error = None
            except EdgefleetError as exc:
                self.ctx.last_error = str(exc)
                log.warning("update check failed: %s", exc)
                if isinstance(exc, Refused):  # asked again at the next poll, never sooner
                    self._retry_s = self.config.server.poll_interval_s
            except OSError as exc:  # e.g. a full disk refused the state record: retried, one line each time
                self.ctx.last_error = f"{exc.strerror or exc} ({exc.filename or 'state'})"
                log.warning("update cycle failed: %s", self.ctx.last_error)
            except Exception as exc:  # never let the updater thread die
                self.ctx.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("update cycle crashed")
            self.cycles += 1
            poll = self.config.server.poll_interval_s * self.rng.uniform(0.8, 1.2)
            if self.record.state is State.DOWNLOADING or self.ctx.last_error:
                delay = min(self._retry_s * self.rng.uniform(0.8, 1.2), poll)
                self._retry_s = min(self._retry_s * 2, self.config.server.poll_interval_s)
            else:
                delay = poll
                self._retry_s = self.config.update.retry_backoff_s

    def _on_check_update(self, _command: Command) -> dict[str, Any]:
        return self.check_now()

    # --- deciding on a manifest --------------------------------------------------------------

    def _verify(self, signed: SignedManifest) -> Manifest:
        """Authenticate against the newest root (walking the server's chain when the manifest names a newer
        root or does not verify), save a newer generation / issued_at before acting on it, then the policy."""
        walked = False
        if signed.root_version is not None and signed.root_version > self.roots.current().version:
            self._update_roots()
            walked = True
        try:
            manifest = self._authenticate(signed)
        except SignatureError:
            if walked:
                raise
            self._update_roots()
            manifest = self._authenticate(signed)
        record = self.record
        if manifest.generation > record.generation or manifest.issued_at > record.trusted_time:
            record.generation = max(record.generation, manifest.generation)
            record.trusted_time = max(record.trusted_time, manifest.issued_at)
            self.store.save(record)
        check_policy(manifest, self.running())
        return manifest

    def _authenticate(self, signed: SignedManifest) -> Manifest:
        seen = Seen(self.record.generation, self.record.trusted_time)
        return authenticate(signed, self.roots.current(), self.config.device_id, seen=seen, clock=self.clock)

    def _update_roots(self) -> None:
        try:
            self.roots.update(self.api().roots)
        except TransportError as exc:
            log.warning("root of trust not refreshed: %s", exc)

    def _consider(self, signed: SignedManifest) -> None:
        transition = accept.consider(self.ctx, self.record, signed, self.running(), self._verify)
        if transition is not None:
            self._enter(transition)

    # --- the machine -------------------------------------------------------------------------

    def _enter(self, transition: Transition) -> State:
        """Save the next state (with the transition's changes), then announce it: save, then act."""
        record = self.record
        new = next_state(record.state, transition.trigger)
        # a manifest refused before it verified says nothing about its target: never remember it
        remember = new in (State.COMMITTED, State.ROLLED_BACK, State.FAILED) or (
            new is State.REJECTED and record.state in (State.VERIFYING, State.INSTALLING))
        for name, value in transition.changes.items():
            setattr(record, name, value)
        record.state = new
        key = record.target_key()
        if remember and key is not None:
            record.finished[key] = new.value
            record.finished_at[key] = time.time()
        self.store.save(record)
        manifest = (record.target or {}).get("manifest", {})
        if new in EVENTS:
            self.ctx.reporter.event(EVENTS[new], manifest, reason=record.reason, via=record.via)
        self.ctx.reporter.report(new, manifest, record.reason, report_metrics(self.ctx, new, record.via))
        if new in ENDS:
            self.ctx.clear_partial()
        return new

    def _drive(self) -> None:
        while self.record.state in IN_PROGRESS and not self._stop.is_set():
            record = self.record
            if self._handlers is None:
                self._handlers = handlers()
            transition = self._handlers[record.state](self.ctx, record, self._manifest(record))
            if transition is None:
                return  # waiting: a transient download error or a stop
            self._enter(transition)

    @staticmethod
    def _manifest(record: StateRecord) -> Manifest:
        assert record.target is not None
        return Manifest.model_validate(record.target["manifest"])
