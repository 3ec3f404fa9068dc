"""``edgefleet-agent run --config FILE``: the daemon that runs on every device.

``Agent`` composes the pieces: config, ModelHost, the source thread and its mailbox, the
inference thread, the local API, the results sinks, telemetry, the update client and the
systemd notifier. Signal handlers only queue the signal and write a byte to a self-pipe;
the main loop turns SIGTERM/SIGINT into an orderly stop (exit 0 within 5 s) and SIGHUP
into a config reload, and pings the systemd watchdog while the agent is healthy.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from edgefleet.agent.config import AgentConfig, load_agent_config
from edgefleet.agent.daemon.api import ApiContext, ApiServer
from edgefleet.agent.daemon.apiguard import api_guard
from edgefleet.agent.daemon.host import ModelHost
from edgefleet.agent.daemon.loop import InferenceLoop, Pipelines
from edgefleet.agent.daemon.modelload import load_model, meta_from_config, startup_model
from edgefleet.agent.daemon.quality import QualityMonitor, upload_samples
from edgefleet.agent.daemon.results import ResultsSink
from edgefleet.agent.daemon.sources import Mailbox, SourceRunner, make_source
from edgefleet.agent.daemon.systemd import Notifier
from edgefleet.agent.errors import ConfigError, EdgefleetError
from edgefleet.agent.logsetup import configure_logging
from edgefleet.agent.runtime.base import Model
from edgefleet.agent.version import package_version
from edgefleet.agent.wire import ModelMeta

log = logging.getLogger("agent.daemon")
STOP_BUDGET_S = 4.0  # SIGTERM to exit; systemd's default TimeoutStopSec is far above, the brief says 5 s
LIVE_KEYS = ("source", "results", "log_level", "log", "telemetry")


def agent_version() -> str:
    return package_version()


class Agent:
    def __init__(self, config: AgentConfig, config_path: str | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.host = ModelHost()
        self.host.add_swap_listener(self._on_swap)
        self.pipelines = Pipelines()
        self.mailbox = Mailbox()
        self.cache_dir: Path | None = None
        self.telemetry: Any | None = None
        self.updater: Any | None = None
        self.api: ApiServer | None = None
        self.runner: SourceRunner | None = None
        self.loop: InferenceLoop | None = None
        self.sink: ResultsSink | None = None
        self.quality: QualityMonitor | None = None
        self.model_error: str | None = None
        self.model_origin: str | None = None  # "slot" | "config"
        self.reloads = 0
        self._signals: collections.deque[int] = collections.deque(maxlen=64)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._reported_dropped = 0
        self._started = time.monotonic()

    # --- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        config = self.config
        self._prepare_state_dir()
        self.quality = QualityMonitor(config.quality, self.config.state_dir if self.cache_dir else None,
                                      device_class=config.server.device_class)
        self._make_telemetry()
        self._start_updater_recovery()
        self._wire_quality_telemetry()
        self._load_initial_model()
        self.sink = ResultsSink(config.results, self.telemetry)
        self.loop = InferenceLoop(self.host, self.mailbox, self.pipelines, self.sink)
        self.loop.quality = self.quality
        self.loop.start()
        self._start_source(config)
        if config.api.listen is not None:
            context = ApiContext(self.host, self.pipelines, self.health, int(config.api.max_body_mb * 1024 * 1024),
                                 observe=self.quality.observe if self.quality is not None else None,
                                 guard=api_guard(config.api))
            self.api = ApiServer(config.api.listen, context).start()
            log.info("local API on http://%s:%d", *self.api.server_address[:2])
        meta = self.host.meta
        status = (f"serving {meta.name} v{meta.version}" if meta is not None
                  else f"no model ({self.model_error or 'none configured'}); waiting for the update server")
        log.info("agent %s ready: %s", config.device_id, status)
        self.notifier.ready(status)
        self._start_network()

    def _start_network(self) -> None:
        """After READY: the telemetry and update threads. Each imports its network stack (paho and ssl;
        requests, urllib3 and cryptography) on its own thread at its first connection, so the way to READY
        holds only the model and what serves it."""
        if self.telemetry is not None:
            self.telemetry.hw = self._hardware()
            self.telemetry.agent_version = agent_version()
            self.telemetry.start()
        if self.updater is not None:
            self.updater.start()

    def _prepare_state_dir(self) -> None:
        try:
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
            self.cache_dir = self.config.state_dir / "cache"
            self.cache_dir.mkdir(exist_ok=True)
        except OSError as exc:
            log.warning("state_dir %s is not writable (%s): no cache, no remembered files", self.config.state_dir,
                        exc.strerror or exc)
            self.cache_dir = None

    def _make_telemetry(self) -> None:
        """The telemetry service, not started: recovery's events go to its spool before READY."""
        if not self.config.mqtt.enabled:
            return
        try:
            from edgefleet.agent.telemetry import Telemetry
        except ImportError as exc:
            log.warning("telemetry is not available: %s", exc)
            return
        # hw and agent_version are only in the birth message, sent after READY: _start_network fills them in
        telemetry = Telemetry(self.config, hw={}, agent_version="")
        self.host.add_observer(lambda _meta, latency, ok: telemetry.record_inference(latency, ok))
        telemetry.add_provider("daemon", self.stats)
        if self.config.server.url:
            try:
                from edgefleet.agent.ota.enrollment import enrolled
            except ImportError:
                pass
            else:  # the server stores nothing of an id that is not enrolled: spool until it is
                config = self.config
                telemetry.connect_when(lambda: enrolled(config))
        self.telemetry = telemetry

    def _wire_quality_telemetry(self) -> None:
        """Telemetry sections ``drift`` and ``shadow``, and the ``upload_samples`` command."""
        telemetry, quality, updater = self.telemetry, self.quality, self.updater
        if telemetry is None or quality is None:
            return
        telemetry.add_provider("drift", quality.drift_report)
        if updater is not None:
            telemetry.add_provider("shadow", updater.shadow_report)

            def upload(command: Any) -> dict[str, Any]:
                limit = command.args.get("limit")
                return upload_samples(quality, updater.api(), self.config.device_id,
                                      limit=int(limit) if isinstance(limit, int) and limit > 0 else None,
                                      delete=bool(command.args.get("delete", True)))

            telemetry.on_command("upload_samples", upload)

    @staticmethod
    def _hardware() -> dict[str, Any]:
        try:
            from edgefleet.agent.runtime import probe_hardware

            # without the runtime inventory: it imports every runtime (torch takes seconds on a Pi), and a
            # restarted device must serve again first; `edgefleet-agent probe` shows the inventory
            return dict(probe_hardware(runtimes=False))
        except Exception as exc:  # the probe is informative only
            log.debug("hardware probe unavailable: %s", exc)
            return {}

    def _start_updater_recovery(self) -> None:
        if not self.config.server.url:
            return
        try:
            from edgefleet.agent.ota.client import UpdateClient
        except ImportError as exc:
            log.warning("OTA updates are not available: %s", exc)
            return
        self.updater = UpdateClient(self.config, self.host, self.telemetry, self.load)
        try:
            self.updater.recover()
        except Exception as exc:  # recovery problems must not keep the device from serving
            log.error("update recovery failed: %s", exc)

    def load(self, path: Path, meta: ModelMeta, *, threads: int | None = None) -> Model:
        """The loader handed to the update client: the runtime layer with this agent's runtime config."""
        runtime = self.config.runtime if threads is None else self.config.runtime.model_copy(
            update={"threads": threads, "autotune": False})
        return load_model(path, runtime, self.cache_dir)

    def _load_initial_model(self) -> None:
        try:
            chosen = startup_model(self.config)
        except EdgefleetError as exc:
            self.model_error = str(exc)
            log.error("no model: %s", exc)
            return
        if chosen is None:
            log.warning("no model in %s and no model.path: waiting for the update server", self.config.state_dir)
            return
        path, meta = chosen
        self.model_origin = "config" if path == self.config.model.path else "slot"
        self.notifier.status(f"loading {meta.name} v{meta.version}")
        try:
            model = self.load(path, meta)
        except Exception as exc:  # a corrupt model must not stop the agent: it waits for an update
            self.model_error = f"cannot load {path}: {exc}"
            log.error("%s", self.model_error)
            return
        self._serve(model, meta)

    def _serve(self, model: Model, meta: ModelMeta) -> None:
        self.host.swap(model, meta)

    def _on_swap(self, model: Model, meta: ModelMeta) -> None:
        """Whoever swapped (start-up, reload, an update, a rollback): announce what serves now."""
        self.model_error = None
        if self.telemetry is not None:
            self.telemetry.set_model(meta, model.runtime, model.delegate)
        if self.quality is not None:
            path = getattr(model, "path", None)
            from_config = path is not None and self.config.model.path is not None and \
                Path(path) == Path(self.config.model.path)
            self.quality.on_swap(model, meta, from_config=from_config)
        log.info("serving %s v%d (%s) on %s/%s", meta.name, meta.version, meta.sha256[:12], model.runtime,
                 model.delegate)

    def _start_source(self, config: AgentConfig) -> None:
        try:
            source = make_source(config.source, self.config.state_dir)
        except ValueError as exc:
            log.error("source not started: %s", exc)
            return
        if source is not None:
            self.runner = SourceRunner(source, self.mailbox, config.source.fps, config.source.reconnect_max_s,
                                       prepare=self.loop.prepare_ahead if self.loop is not None else None).start()
            log.info("source %s %s at up to %g fps", config.source.kind, config.source.uri or "", config.source.fps)

    # --- health --------------------------------------------------------------------------------

    def alive(self) -> tuple[bool, str]:
        """What the watchdog checks: the threads run and no inference is stuck."""
        loop = self.loop
        if loop is None or not loop.alive():
            return False, "the inference thread is not running"
        stuck = loop.stuck_for()
        if stuck > self.config.source.stall_s:
            return False, f"an inference has been running for {stuck:.0f}s"
        if time.monotonic() - loop.heartbeat > self.config.source.stall_s:
            return False, "the inference thread stopped turning"
        if self.runner is not None and not self.runner.alive():
            return False, "the source thread died"
        return True, "ok"

    def health(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "shutting down"
        ok, reason = self.alive()
        if not ok:
            return ok, reason
        if self.host.meta is None:
            return False, f"no model: {self.model_error}" if self.model_error else "no model loaded yet"
        return True, "ok"

    def stats(self) -> dict[str, Any]:
        loop, runner = self.loop, self.runner
        return {
            "source": None if runner is None else {"kind": runner.source.kind, "state": runner.state,
                                                   "failures": runner.failures, "last_error": runner.last_error},
            "frames": {"delivered": self.mailbox.delivered, "dropped": self.mailbox.dropped},
            "inference": None if loop is None else {"processed": loop.processed, "errors": loop.errors,
                                                    "no_model": loop.skipped_no_model},
            "reloads": self.reloads,
        }

    # --- main loop -----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # the pipe is full: the main loop wakes anyway

    def install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def request_stop(self) -> None:
        self._on_signal(signal.SIGTERM, None)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        watchdog = self.notifier.watchdog_interval_s
        next_ping = time.monotonic()
        last_status = 0.0
        while True:
            timeout = 1.0 if watchdog is None else max(0.0, min(1.0, next_ping - time.monotonic()))
            try:
                select.select([self._wake_r], [], [], timeout)
            except InterruptedError:
                pass
            self._drain_pipe()
            while self._signals:
                signum = self._signals.popleft()
                if signum in (signal.SIGTERM, signal.SIGINT):
                    log.info("%s: stopping", signal.Signals(signum).name)
                    return self.stop()
                if signum == signal.SIGHUP:
                    self.reload()
            now = time.monotonic()
            if watchdog is not None and now >= next_ping:
                ok, reason = self.alive()
                if ok:
                    self.notifier.watchdog()
                else:
                    log.error("unhealthy, not pinging the watchdog: %s", reason)
                next_ping = now + watchdog
            self._report_dropped()
            if self.notifier.enabled and now - last_status >= 10.0:
                last_status = now
                self.notifier.status(self._status_line())

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def _report_dropped(self) -> None:
        dropped = self.mailbox.dropped
        if dropped > self._reported_dropped and self.telemetry is not None:
            self.telemetry.record_dropped(dropped - self._reported_dropped)
        self._reported_dropped = dropped

    def _status_line(self) -> str:
        meta = self.host.meta
        loop = self.loop
        model = f"{meta.name} v{meta.version}" if meta else "no model"
        done = loop.processed if loop else 0
        return f"{model}; {done} frames inferred, {self.mailbox.dropped} dropped"

    # --- reload --------------------------------------------------------------------------------

    def reload(self) -> None:
        if self.config_path is None:
            log.warning("SIGHUP: started without a config file, nothing to reload")
            return
        self.notifier.reloading()
        try:
            new = load_agent_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.notifier.ready("reload refused: bad config")
            return
        old = self.config
        self.reloads += 1
        changed = [key for key in AgentConfig.model_fields if getattr(old, key) != getattr(new, key)]
        if new.log != old.log:
            configure_logging(new.log_level, new.log.format)
        elif new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level)
        if new.source != old.source:
            self._restart_source(new)
        if new.results != old.results:
            if self.sink is not None:
                self.sink.close()
            self.sink = ResultsSink(new.results, self.telemetry)
            if self.loop is not None:
                self.loop.sink = self.sink
        needs_restart = [key for key in changed if key not in LIVE_KEYS]
        if new.telemetry != old.telemetry and self.telemetry is not None:
            setter = getattr(self.telemetry, "set_interval", None)
            if setter is not None and new.telemetry.interval_s != old.telemetry.interval_s:
                setter(new.telemetry.interval_s)
            if new.telemetry.model_copy(update={"interval_s": old.telemetry.interval_s}) != old.telemetry \
                    or setter is None:
                needs_restart.append("telemetry")
        if "model" in needs_restart and self._reload_model(new):
            needs_restart.remove("model")
        self.config = new.model_copy(update={key: getattr(old, key) for key in needs_restart})
        applied = [key for key in changed if key not in needs_restart]
        log.info("config reloaded from %s: applied %s%s", self.config_path, applied or "nothing (no change)",
                 f"; needs a restart: {needs_restart}" if needs_restart else "")
        self.notifier.ready(self._status_line())

    def _restart_source(self, new: AgentConfig) -> None:
        if self.runner is not None:
            self.runner.stop(timeout=2.0)
            self.runner = None
        self._start_source(new)

    def _reload_model(self, new: AgentConfig) -> bool:
        """A changed ``model`` section applies live while the model came from it (not from an update)."""
        if self.model_origin == "slot" or new.model.path is None:
            return False
        try:
            meta = meta_from_config(new.model, new.model.path)
            model = load_model(new.model.path, self.config.runtime, self.cache_dir)
        except Exception as exc:
            log.error("reload: cannot load %s, keeping the served model: %s", new.model.path, exc)
            return False
        self.model_origin = "config"
        self._serve(model, meta)
        return True

    # --- stop ----------------------------------------------------------------------------------

    def stop(self) -> int:
        """Stop everything within STOP_BUDGET_S; in-flight API requests are answered, new ones refused."""
        self._stopping = True
        deadline = time.monotonic() + STOP_BUDGET_S
        self.notifier.stopping("stopping")

        def left(share: float) -> float:
            return max(0.1, (deadline - time.monotonic()) * share)

        if self.runner is not None:
            self.runner.stop(timeout=left(0.2))
        if self.api is not None:
            unanswered = self.api.stop(timeout=left(0.4))
            if unanswered:
                log.warning("%d API requests were still running at shutdown", unanswered)
        if self.loop is not None:
            self.loop.stop(timeout=left(0.3))
        if self.updater is not None:
            self.updater.stop(timeout=left(0.3))
        if self.telemetry is not None:
            self.telemetry.stop(timeout=left(0.8))
        if self.sink is not None:
            self.sink.close()
        self.notifier.close()
        log.info("stopped")
        return 0

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


GIL_SWITCH_INTERVAL_S = 0.0005


def tune_interpreter() -> None:
    """Hand the GIL over sooner than CPython's default 5 ms.

    The inference thread spends most of its time in native code without the GIL; when the
    runtime returns, it must get the GIL back from whichever thread (source, API) holds it.
    With the default interval that wait measured ~12% of end-to-end throughput on a 1 ms
    model (benchmarks/daemon_throughput.py); at 0.5 ms the daemon is within a few % of bare.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def run_agent(config_path: str) -> int:
    """The ``run`` subcommand: 0 after an orderly stop, 2 for a bad config, 1 when it cannot start."""
    try:
        config = load_agent_config(config_path)
    except ConfigError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log.format)
    tune_interpreter()
    agent = Agent(config, config_path)
    agent.install_signals()
    try:
        agent.start()
    except EdgefleetError as exc:  # a known cause (an address taken, a bad state dir): one line, no traceback
        log.error("cannot start: %s", exc)
        agent.stop()
        return 1
    except Exception as exc:
        log.exception("the agent could not start")
        print(f"edgefleet-agent: cannot start: {exc}", file=sys.stderr)
        agent.stop()
        return 1
    freeze_startup_objects()
    try:
        code = agent.run()
    finally:
        agent.close()
    exit_without_teardown(code)
    return code  # not reached


def freeze_startup_objects() -> None:
    """Move what start-up made (modules, schemas, the model's wrappers: ~200k objects) out of the collector's
    reach: the periodic full collections then walk only what serving allocates, instead of pausing the
    inference thread on objects that live as long as the process."""
    gc.collect()
    gc.freeze()


def exit_without_teardown(code: int) -> None:
    """After the orderly stop everything that matters is written: flush the logs and leave without the
    interpreter's teardown, which took 1-7 s on the 2-core dev box (a final collection over every object
    and module), time that counts against the 5 s a SIGTERM may take."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m agent.daemon.main", description="the edgefleet agent daemon")
    parser.add_argument("--config", required=True, help="agent YAML config file")
    args = parser.parse_args(argv)
    return run_agent(args.config)


if __name__ == "__main__":
    threading.current_thread().name = "main"
    sys.exit(main())
