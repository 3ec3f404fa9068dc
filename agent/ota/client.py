"""UpdateClient: polls the signed manifest and drives one update through the persisted state machine.

Each step saves its state first (agent/ota/state.py), then acts:

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

import importlib.util
import logging
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config import AgentConfig
from agent.daemon.host import ModelHost
from agent.daemon.quality import save_profile
from agent.errors import ConfigError, EdgefleetError, Refused, SignatureError, TransportError, UpdateRejected
from agent.ota.download import DiskFull, Downloader, apply_delta
from agent.ota.enrollment import Enrollment
from agent.ota.serverapi import ReportQueue, ServerApi
from agent.ota.slots import SlotInfo, SlotStore
from agent.ota.state import (
    EVENTS,
    IN_PROGRESS,
    State,
    StateRecord,
    StateStore,
    Trigger,
    next_state,
    target_key,
)
from agent.ota.synthetic import synthetic_feeds
from agent.ota.trial import LatencyWindow, TrialWatcher, p95_ms
from agent.ota.verify import Running, check_artifact, verify_manifest
from agent.quality import BoxLayout, ShadowRunner
from agent.runtime.base import Model
from agent.signing import load_public_key
from agent.wire import Command, Manifest, ModelMeta, SignedManifest, UpdateReport

log = logging.getLogger(__name__)

class Loader(Protocol):
    """Opens a model file; ``threads`` overrides the runtime threads (the shadow instance runs on few)."""

    def __call__(self, path: Path, meta: ModelMeta, *, threads: int | None = None) -> Model: ...


RUNTIME_MODULES = {"litert": "ai_edge_litert", "tflite_runtime": "tflite_runtime", "onnxruntime": "onnxruntime",
                   "torch": "torch", "executorch": "executorch"}


class UpdateClient:
    def __init__(self, config: AgentConfig, host: ModelHost, telemetry: Any | None, loader: Loader, *,
                 session: requests.Session | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.host = host
        self.telemetry = telemetry
        self.loader = loader
        self.state_dir = Path(config.state_dir)
        self.slots = SlotStore(self.state_dir)
        self.update_dir = self.state_dir / "update"
        self.partial_dir = self.update_dir / "partial"
        self.store = StateStore(self.update_dir / "state.json")
        self.reports = ReportQueue(self.update_dir / "reports")
        self.record = self.store.load()
        self.session = session or requests.Session()
        self.rng = rng or random.Random()
        self.baseline = LatencyWindow()
        host.add_observer(self.baseline)
        self.bytes_transferred = 0  # artifact and delta bytes received, all attempts
        self.last_error: str | None = None
        self.cycles = 0  # poll cycles the worker finished
        self._trial_metrics: dict[str, Any] = {}
        self._shadow: ShadowRunner | None = None  # the candidate being shadowed right now
        self._shadow_last: dict[str, Any] | None = None  # its final report (telemetry and UpdateReport)
        self._api: ServerApi | None = None
        self._enrollment = Enrollment(config, self.state_dir, _hardware,
                                      on_enrolled=getattr(telemetry, "announce", None))
        self._key: Ed25519PublicKey | None = None
        self._etag: str | None = None
        self._signed: SignedManifest | None = None  # the manifest behind _etag
        self._old: tuple[Model, ModelMeta] | None = None  # the previous model, kept loaded during a trial
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_s = config.update.retry_backoff_s
        if telemetry is not None:
            telemetry.on_command("check_update", self._on_check_update)

    # --- public --------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.record.state

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
        runner = self._shadow
        return runner.report() if runner is not None else self._shadow_last

    def check_now(self) -> dict[str, Any]:
        """Poll at once: wake the worker when it runs, else run one cycle here."""
        if self._thread is not None and self._thread.is_alive():
            self._wake.set()
            return {"state": self.record.state.value, "queued": True}
        self.run_once()
        return {"state": self.record.state.value}

    def recover(self) -> State:
        """Start-up: map the saved state to its recovery action (see agent/ota/state.py)."""
        with self._lock:
            record = self.record = self.store.load()
            if record.state in IN_PROGRESS:
                record.attempts += 1
                if record.attempts > self.config.update.max_attempts:
                    reason = f"gave up after {record.attempts} restarts in state {record.state.value}"
                    self._restore_previous()
                    self._enter(Trigger.CRASH_LOOP, reason=reason)
                elif record.state is State.TRIAL:
                    self._restore_previous()
                    self._enter(Trigger.FAILED, reason="the agent restarted during the trial")
                else:
                    if record.state is State.INSTALLING:
                        self._restore_previous()
                    self._save(record)
            self._serve_active()
            return self.record.state

    def run_once(self) -> State:
        """One cycle: flush reports, fetch the manifest, act on it, drive an update in progress."""
        with self._lock:
            self._flush_reports()
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
            api = ServerApi(server.url, None, timeout_s=server.timeout_s, session=self.session)
            api.token = self._enrollment.token(api)
            self._api = api
        return self._api

    # --- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            if self._wake.wait(delay):
                self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.run_once()
                self.last_error = None
            except EdgefleetError as exc:
                self.last_error = str(exc)
                log.warning("update check failed: %s", exc)
                if isinstance(exc, Refused):  # asked again at the next poll, never sooner
                    self._retry_s = self.config.server.poll_interval_s
            except OSError as exc:  # e.g. a full disk refused the state record: retried, one line each time
                self.last_error = f"{exc.strerror or exc} ({exc.filename or 'state'})"
                log.warning("update cycle failed: %s", self.last_error)
            except Exception as exc:  # never let the updater thread die
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("update cycle crashed")
            self.cycles += 1
            poll = self.config.server.poll_interval_s * self.rng.uniform(0.8, 1.2)
            if self.record.state is State.DOWNLOADING or self.last_error:
                delay = min(self._retry_s * self.rng.uniform(0.8, 1.2), poll)
                self._retry_s = min(self._retry_s * 2, self.config.server.poll_interval_s)
            else:
                delay = poll
                self._retry_s = self.config.update.retry_backoff_s

    def _on_check_update(self, _command: Command) -> dict[str, Any]:
        return self.check_now()

    # --- deciding on a manifest --------------------------------------------------------------

    def _public_key(self) -> Ed25519PublicKey:
        if self._key is None:
            path = self.config.server.public_key
            if path is None:
                raise ConfigError("server.public_key is not set: refusing unsigned updates")
            self._key = load_public_key(path)
        return self._key

    def running(self) -> Running:
        meta = self.host.meta
        info = self.slots.active_info()
        if meta is None:
            if info is None:
                return Running()
            return Running(info.meta.version, info.sha256, info.issued_at)
        issued = info.issued_at if info is not None and info.sha256 == meta.sha256 else None
        return Running(meta.version, meta.sha256, issued)

    def _consider(self, signed: SignedManifest) -> None:
        record = self.record
        try:
            manifest = verify_manifest(signed, self._public_key(), self.config.device_id, self.running())
        except (SignatureError, UpdateRejected) as exc:
            self._reject(signed, str(exc))
            return
        key = target_key(signed.manifest)
        running = self.running()
        if manifest.model.version == running.version and manifest.artifact.sha256 == running.sha256:
            return  # up to date
        if record.state is State.DOWNLOADING and record.target_key() == key:
            return  # already on it
        if record.state in IN_PROGRESS and record.state is not State.DOWNLOADING:
            return  # finish (or roll back) the update in hand first
        outcome = record.finished.get(key)
        if outcome == State.ROLLED_BACK.value:
            return  # proven unhealthy here: only a new version (or a revert) moves the device again
        if outcome in (State.FAILED.value, State.REJECTED.value) and \
                time.time() - record.finished_at.get(key, 0.0) < self.config.update.retry_failed_s:
            return
        self._clear_partial()
        self._shadow_last = None
        self._enter(Trigger.ACCEPTED, target=signed.model_dump(mode="json"), attempts=0, reason=None,
                    slot=None, previous=None, via=None, baseline_p95_ms=None)

    def _reject(self, signed: SignedManifest, reason: str) -> None:
        log.warning("manifest rejected: %s", reason)
        if self.record.state in IN_PROGRESS:
            self._event("update.rejected", signed.manifest, reason=reason)
            self._report(State.REJECTED, signed.manifest, reason)
            return
        if self.record.state is State.REJECTED and self.record.target == signed.model_dump(mode="json"):
            return  # the same manifest again: already reported
        self._enter(Trigger.REJECTED, target=signed.model_dump(mode="json"), reason=reason, attempts=0)

    # --- the machine -------------------------------------------------------------------------

    def _save(self, record: StateRecord) -> None:
        self.store.save(record)

    def _enter(self, trigger: Trigger, **changes: Any) -> State:
        """Save the next state (with ``changes``), then announce it: save, then act."""
        record = self.record
        new = next_state(record.state, trigger)
        # a manifest refused before it verified says nothing about its target: never remember it
        remember = new in (State.COMMITTED, State.ROLLED_BACK, State.FAILED) or (
            new is State.REJECTED and record.state in (State.VERIFYING, State.INSTALLING))
        for name, value in changes.items():
            setattr(record, name, value)
        record.state = new
        key = record.target_key()
        if remember and key is not None:
            record.finished[key] = new.value
            record.finished_at[key] = time.time()
        self._save(record)
        manifest = (record.target or {}).get("manifest", {})
        if new in EVENTS:
            self._event(EVENTS[new], manifest, reason=record.reason, via=record.via)
        self._report(new, manifest, record.reason)
        if new in (State.COMMITTED, State.ROLLED_BACK, State.REJECTED, State.FAILED):
            self._clear_partial()
        return new

    def _drive(self) -> None:
        handlers = {State.DOWNLOADING: self._download, State.VERIFYING: self._verify,
                    State.INSTALLING: self._install, State.TRIAL: self._trial}
        while self.record.state in IN_PROGRESS and not self._stop.is_set():
            before = (self.record.state, self.record.updated_at)
            handlers[self.record.state](self._manifest())
            if (self.record.state, self.record.updated_at) == before:
                return  # waiting: a transient download error or a stop during the trial

    def _manifest(self) -> Manifest:
        assert self.record.target is not None
        return Manifest.model_validate(self.record.target["manifest"])

    # --- downloading -------------------------------------------------------------------------

    def _download(self, manifest: Manifest) -> None:
        art = manifest.artifact
        done = self.partial_dir / f"{art.sha256}.bin"
        if done.exists() and done.stat().st_size == art.size:
            self._enter(Trigger.DOWNLOADED)
            return
        upd = self.config.update
        downloader = Downloader(self.session, headers=self.api().auth, stall_timeout_s=upd.stall_timeout_s,
                                attempt_timeout_s=upd.download_timeout_s,
                                connect_timeout_s=self.config.server.timeout_s)
        try:
            Downloader.ensure_space(self.partial_dir, art.size + (manifest.delta.size if manifest.delta else 0),
                                    upd.min_free_mb)
            via = "full"
            if manifest.delta is not None and self._try_delta(manifest, downloader, done):
                via = "delta"
            else:
                part = self.partial_dir / f"{art.sha256}.part"
                try:
                    downloader.fetch(art.url, part, art.size)
                finally:
                    self.bytes_transferred += downloader.total_transferred
                    downloader.total_transferred = 0
                os.replace(part, done)
        except TransportError as exc:
            self.last_error = str(exc)
            log.warning("download paused: %s", exc)
            return
        except (DiskFull, UpdateRejected) as exc:
            if isinstance(exc, DiskFull):
                self._clear_partial()  # give back what this download took, so that `failed` can be saved
            self._enter(Trigger.FAILED, reason=str(exc))
            return
        self._enter(Trigger.DOWNLOADED, via=via)

    def _current_artifact(self, sha256: str) -> Path | None:
        info = self.slots.active_info()
        if info is not None and info.sha256 == sha256:
            return self.slots.model_path(self.slots.active_slot() or "")
        model = self.host.model
        meta = self.host.meta
        if model is not None and meta is not None and meta.sha256 == sha256 and Path(model.path).is_file():
            return Path(model.path)
        return None

    def _try_delta(self, manifest: Manifest, downloader: Downloader, done: Path) -> bool:
        delta = manifest.delta
        assert delta is not None
        old = self._current_artifact(delta.from_sha256)
        if old is None:
            return False
        patch = self.partial_dir / f"{delta.sha256}.patch"
        try:
            downloader.fetch(delta.url, patch, delta.size)
        except UpdateRejected as exc:
            log.warning("delta unavailable (%s); fetching the full artifact", exc)
            return False
        finally:
            self.bytes_transferred += downloader.total_transferred
            downloader.total_transferred = 0
        try:
            check_artifact(patch, delta.sha256, delta.size)
            tmp = done.with_suffix(".patched")
            apply_delta(old, patch, tmp)
            check_artifact(tmp, manifest.artifact.sha256, manifest.artifact.size)
        except UpdateRejected as exc:
            log.warning("delta failed (%s); fetching the full artifact", exc)
            patch.unlink(missing_ok=True)
            done.with_suffix(".patched").unlink(missing_ok=True)
            return False
        os.replace(tmp, done)
        patch.unlink(missing_ok=True)
        return True

    # --- verifying ---------------------------------------------------------------------------

    def _verify(self, manifest: Manifest) -> None:
        art = manifest.artifact
        done = self.partial_dir / f"{art.sha256}.bin"
        try:
            check_artifact(done, art.sha256, art.size)
        except FileNotFoundError:
            self._enter(Trigger.FAILED, reason="the downloaded artifact is gone")
            return
        except UpdateRejected as exc:
            done.unlink(missing_ok=True)
            self._enter(Trigger.REJECTED, reason=str(exc))
            return
        problem = self._probe(done, art.format)
        if problem is not None:
            self._enter(Trigger.FAILED, reason=problem)
            return
        active = self.slots.active_slot()
        self._enter(Trigger.VERIFIED, slot=self.slots.inactive_slot(), previous=active)

    def _probe(self, path: Path, fmt: str) -> str | None:
        """Test-load in a child process; None when the model loaded and ran, else the reason."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.pop("EDGEFLEET_TEST_CRASH_AT", None)
        try:
            done = subprocess.run([sys.executable, "-m", "agent.ota.probe_load", str(path), "--format", fmt],
                                  capture_output=True, text=True, env=env,
                                  timeout=self.config.update.probe_timeout_s)
        except subprocess.TimeoutExpired:
            return f"test-load did not finish within {self.config.update.probe_timeout_s:.0f}s"
        if done.returncode < 0:
            return f"test-load crashed the runtime (signal {-done.returncode})"
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            return lines[-1] if lines else f"test-load exited with {done.returncode}"
        return None

    # --- installing --------------------------------------------------------------------------

    def _install(self, manifest: Manifest) -> None:
        art = manifest.artifact
        record = self.record
        slot = record.slot or self.slots.inactive_slot()
        source = self.partial_dir / f"{art.sha256}.bin"
        meta = manifest.model.model_copy(update={"sha256": art.sha256})
        try:
            check_artifact(source, art.sha256, art.size)
            info = SlotInfo(meta=meta, file=f"model.{art.format}", format=art.format, size=art.size,
                            sha256=art.sha256, issued_at=manifest.issued_at, rollout_id=manifest.rollout_id)
            path = self.slots.install(slot, source, info)
            model = self.loader(path, meta)
        except (OSError, ValueError, EdgefleetError) as exc:
            self._enter(Trigger.FAILED, reason=f"install failed: {exc}")
            return
        try:
            feeds = synthetic_feeds(model.inputs)
            for _ in range(self.config.update.warmup_runs):
                model.infer(feeds)
        except Exception as exc:
            model.close()
            self._enter(Trigger.FAILED, reason=f"warm-up failed: {type(exc).__name__}: {exc}")
            return
        self._keep_profile(manifest)
        if manifest.shadow is not None and self.host.model is not None:
            passed, reason = self._shadow_candidate(manifest, path, meta)
            if passed is None:  # stopping: recovery installs (and shadows) again at the next start
                model.close()
                return
            if not passed:
                model.close()
                self._enter(Trigger.REJECTED, reason=f"shadow: {reason}")
                return
        baseline = self._baseline_p95()
        self._old = self.host.swap(model, meta, close_old=False)
        self.slots.switch(slot)
        self._enter(Trigger.INSTALLED, baseline_p95_ms=baseline)

    def _keep_profile(self, manifest: Manifest) -> None:
        """Save the manifest's drift profile where the daemon finds it when this model serves."""
        if manifest.drift_profile is None:
            return
        try:
            save_profile(self.state_dir, manifest.artifact.sha256, manifest.drift_profile)
        except (OSError, ValueError) as exc:  # drift monitoring is informative: never fail an update on it
            log.warning("drift profile of %s v%d not kept: %s", manifest.model.name, manifest.model.version, exc)

    def _shadow_candidate(self, manifest: Manifest, path: Path, meta: ModelMeta) -> tuple[bool | None, str]:
        """Shadow a second instance of the candidate opened with ``quality.shadow.threads`` runtime threads, so
        the comparison leaves the serving model its cores; the instance that passes serves with the full count."""
        try:
            shadow = self.loader(path, meta, threads=self.config.quality.shadow.threads)
        except (OSError, ValueError, EdgefleetError) as exc:
            return False, f"cannot open the candidate for shadowing: {exc}"
        try:
            return self._run_shadow(manifest, shadow)
        finally:
            shadow.close()

    def _run_shadow(self, manifest: Manifest, candidate: Model) -> tuple[bool | None, str]:
        """Run the candidate beside the serving model on live inputs (ModelHost tap) until the verdict
        is known or ``quality.shadow.timeout_s``; (None, why) when the agent is stopping."""
        assert manifest.shadow is not None
        serving = self.host.model
        if serving is not None and _signature(serving.inputs) != _signature(candidate.inputs):
            return False, "the candidate's inputs differ from the serving model's: cannot compare them"
        boxes = manifest.model.boxes
        layout = BoxLayout(**boxes) if manifest.model.task == "detection" and boxes else None  # type: ignore[arg-type]
        runner = ShadowRunner(candidate.infer, manifest.shadow, manifest.model.task, layout=layout)

        def tap(feeds: Any, outputs: Any, _meta: ModelMeta) -> None:
            runner.offer(feeds, outputs)

        self._shadow = runner
        self._event("update.shadowing", manifest.model_dump(mode="json"))
        deadline = time.monotonic() + self.config.quality.shadow.timeout_s
        self.host.add_tap(tap)
        try:
            while (verdict := runner.verdict())[0] is None:
                if self._stop.is_set():
                    return None, "stopping"
                if time.monotonic() >= deadline:
                    verdict = (False, f"no verdict within {self.config.quality.shadow.timeout_s:g}s "
                                      f"({verdict[1]})")
                    break
                self._stop.wait(0.1)
        finally:
            self.host.remove_tap(tap)
            runner.stop()
            report = runner.report()
            report.update(passed=verdict[0] if verdict[0] is not None else report.get("passed"),
                          reason=verdict[1], model=manifest.model.name, version=manifest.model.version)
            self._shadow_last = report
            self._shadow = None
        log.info("shadow %s v%d: %s (%s)", manifest.model.name, manifest.model.version,
                 "passed" if verdict[0] else "failed", verdict[1])
        return verdict

    def _baseline_p95(self) -> float | None:
        """The serving model's p95 over its recent live inferences, else over synthetic ones."""
        meta = self.host.meta
        if meta is None:
            return None
        window = self.baseline.snapshot(meta)
        if len(window) >= 20:
            return p95_ms(window)
        model = self.host.model
        if model is None:
            return None
        feeds = synthetic_feeds(model.inputs)
        samples = []
        for _ in range(20):
            start = time.perf_counter()
            try:
                self.host.infer(feeds)
            except Exception:
                return None
            samples.append(time.perf_counter() - start)
        return p95_ms(samples)

    # --- trial -------------------------------------------------------------------------------

    def _trial(self, manifest: Manifest) -> None:
        policy = manifest.trial or self.config.update.trial
        meta = manifest.model.model_copy(update={"sha256": manifest.artifact.sha256})
        served = self.host.meta
        if served is None or (served.version, served.sha256) != (meta.version, meta.sha256):
            self._roll_back("the candidate is not serving")
            return
        watcher = TrialWatcher(policy, meta, self.record.baseline_p95_ms)
        self.host.add_observer(watcher)
        try:
            while not self._stop.is_set():
                verdict = watcher.evaluate()
                if verdict.decided:
                    break
                self._stop.wait(0.05)
            else:
                return  # stopping: recovery rolls the trial back at the next start
        finally:
            self.host.remove_observer(watcher)
        if verdict.passed:
            if self._old is not None:
                self._old[0].close()
                self._old = None
            self._trial_metrics = verdict.metrics
            self._enter(Trigger.PASSED, reason=None)
        else:
            self._trial_metrics = verdict.metrics
            self._roll_back(verdict.reason or "trial breached")

    def _roll_back(self, reason: str) -> None:
        self._restore_previous()
        self._enter(Trigger.BREACHED if self.record.state is State.TRIAL else Trigger.FAILED, reason=reason)

    def _restore_previous(self) -> None:
        """Put the pointer back on the slot that served before the update, and serve it."""
        record = self.record
        if record.previous is not None and self.slots.active_slot() != record.previous \
                and self.slots.info(record.previous) is not None:
            self.slots.set_pointer(record.previous, None)
        if self._old is not None:
            model, meta = self._old
            self._old = None
            self.host.swap(model, meta, close_old=True)
            return
        self._serve_active()

    def _serve_active(self) -> None:
        """If the host serves something other than the active slot, load the active slot and swap."""
        active = self.slots.active()
        served = self.host.meta
        if active is None or served is None:
            return
        path, meta = active
        if (served.version, served.sha256) == (meta.version, meta.sha256):
            return
        try:
            model = self.loader(path, meta)
        except EdgefleetError as exc:
            log.error("cannot load the active slot %s: %s", path, exc)
            return
        self.host.swap(model, meta, close_old=True)

    # --- events, reports, enrollment ----------------------------------------------------------

    def _event(self, type_: str, manifest: dict[str, Any], **fields: Any) -> None:
        model = manifest.get("model", {}) if isinstance(manifest, dict) else {}
        payload = {"model": model.get("name"), "version": model.get("version"),
                   "rollout_id": manifest.get("rollout_id") if isinstance(manifest, dict) else None,
                   **{k: v for k, v in fields.items() if v is not None}}
        log.info("%s %s v%s%s", type_, payload["model"], payload["version"],
                 f": {fields['reason']}" if fields.get("reason") else "")
        if self.telemetry is None:
            return
        try:
            self.telemetry.event(type_, **payload)
        except Exception:
            log.exception("telemetry event %s failed", type_)

    def _report(self, state: State, manifest: dict[str, Any], reason: str | None) -> None:
        model = manifest.get("model", {}) if isinstance(manifest, dict) else {}
        artifact = manifest.get("artifact", {}) if isinstance(manifest, dict) else {}
        metrics = dict(self._trial_metrics) if state in (State.COMMITTED, State.ROLLED_BACK) else {}
        if self._shadow_last is not None and state in (State.TRIAL, State.COMMITTED, State.ROLLED_BACK,
                                                       State.REJECTED):
            metrics["shadow"] = self._shadow_last
        if self.record.via:
            metrics["via"] = self.record.via
        metrics["bytes_transferred"] = self.bytes_transferred
        try:
            report = UpdateReport(state=state.value, model=str(model.get("name") or "?"),
                                  version=int(model.get("version") or 0),
                                  sha256=artifact.get("sha256") if isinstance(artifact.get("sha256"), str) else None,
                                  rollout_id=manifest.get("rollout_id") if isinstance(manifest, dict) else None,
                                  reason=reason, metrics=metrics)
        except (ValueError, TypeError):
            return
        self.reports.put(report)
        self._flush_reports()

    def _flush_reports(self) -> None:
        if not self.reports.pending():
            return
        try:
            self.reports.flush(self.api(), self.config.device_id)
        except (TransportError, ConfigError) as exc:
            log.info("reports queued: %s", exc)

    def _clear_partial(self) -> None:
        if self.partial_dir.exists():
            for path in self.partial_dir.iterdir():
                if path.is_file():
                    path.unlink(missing_ok=True)


def _signature(inputs: list[Any]) -> list[tuple[str, list[int | None], str]]:
    return [(spec.name, list(spec.shape), spec.dtype) for spec in inputs]


def _hardware() -> tuple[str | None, dict[str, Any]]:
    """(device class, hw) from the runtime layer's probe, else the installed runtimes alone."""
    try:
        from agent import runtime

        hw = runtime.probe_hardware()  # type: ignore[attr-defined]
        device_class = runtime.device_class(hw)  # type: ignore[attr-defined]
        runtimes = list(runtime.available_runtimes())  # type: ignore[attr-defined]
        data = hw.model_dump(mode="json") if hasattr(hw, "model_dump") else dict(hw) if isinstance(hw, dict) else {}
        data["runtimes"] = runtimes
        return device_class, data
    except (ImportError, AttributeError, TypeError):
        runtimes = [name for name, module in RUNTIME_MODULES.items() if importlib.util.find_spec(module)]
        return None, {"runtimes": runtimes}
