"""Telemetry: the agent's MQTT side (birth and will, metrics, events, results, commands).

Threads: callers (the inference loop, the OTA client) only touch in-memory counters or the
spool; one worker thread owns the paho client, emits telemetry on its interval and sends
the spool in order; one command thread runs command handlers. See docs/telemetry.md.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.telemetry.backoff import Backoff
from edgefleet.agent.telemetry.commands import CommandDispatcher
from edgefleet.agent.telemetry.histogram import LatencyHistogram
from edgefleet.agent.telemetry.link import LinkHandlers, MqttLink
from edgefleet.agent.telemetry.spool import Spool
from edgefleet.agent.telemetry.system import SystemSampler
from edgefleet.agent.wire import (
    Birth,
    Command,
    Event,
    InferenceStats,
    LatencyHist,
    LatencySummary,
    ModelMeta,
    ModelRef,
    SystemStats,
    Will,
    device_topic,
)
from edgefleet.agent.wire import Telemetry as TelemetryDoc

log = logging.getLogger(__name__)

Provider = Callable[[], "dict[str, Any] | None"]
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 86400.0
RESULTS_QUEUE = 64


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), default=str).encode()


class Telemetry:
    def __init__(self, config: AgentConfig, *, hw: dict[str, Any], agent_version: str) -> None:
        self.config = config
        self.device_id = config.device_id
        self.hw = dict(hw)
        self.agent_version = agent_version
        self.topics = {leaf: device_topic(config.device_id, leaf)
                       for leaf in ("status", "telemetry", "events", "results", "commands")}
        tcfg = config.telemetry
        self._spool = Spool(config.state_dir / tcfg.spool_file, max_bytes=int(tcfg.spool_max_mb * 2**20),
                            max_age_s=tcfg.spool_max_age_s)
        self._hist = LatencyHistogram()
        self._counter_lock = threading.Lock()
        self._dropped_frames = 0
        self._interval_s = tcfg.interval_s
        self._model = ModelRef()
        self._runtime: str | None = None
        self._delegate: str | None = None
        self._providers: dict[str, Provider] = {}
        self._results_enabled = config.results.mqtt
        self._results: collections.deque[bytes] = collections.deque(maxlen=RESULTS_QUEUE)
        self._results_tokens = max(1.0, config.results.max_per_s)
        self._results_refill = time.monotonic()
        self._commands = CommandDispatcher(self.event)
        self._commands.register("set_telemetry_interval", self._cmd_set_interval)
        self._commands.register("set_results", self._cmd_set_results)
        mqtt_cfg = config.mqtt
        self._link = MqttLink(mqtt_cfg, config.device_id, LinkHandlers(
            will=self._will, next_session=lambda: self._spool.next_counter("session"),
            connected=self._on_connected, disconnected=self._on_disconnected,
            published=self._on_published, message=self._on_message),
            Backoff(mqtt_cfg.reconnect_min_s, max(mqtt_cfg.reconnect_min_s, mqtt_cfg.reconnect_max_s)))
        self._sampler = SystemSampler(config.state_dir)
        # worker-thread state
        self._inflight: dict[int, int] = {}  # paho mid -> spool row id
        self._acked: list[int] = []
        self._last_sent_id = 0
        self._birth_dirty = False
        self._offline_mid: int | None = None
        self._offline_acked = False
        self._counts = {"sent": 0, "rejected": 0, "results_sent": 0, "results_dropped": 0, "births": 0}
        self._last_emit = time.monotonic()
        self._next_emit = self._last_emit + self._interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._may_connect: Callable[[], bool] | None = None  # None: connect at once

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None or self._stopped:
            return
        self._commands.start()
        if not self.config.mqtt.enabled:
            log.info("MQTT is off (mqtt.enabled: false): telemetry is spooled, not sent")
        self._thread = threading.Thread(target=self._run, name="edgefleet-telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("telemetry worker did not stop within %.1fs", timeout)
        self._commands.stop(timeout=min(timeout, 2.0))
        if self._link.connected and (self._thread is None or not self._thread.is_alive()):
            self._link.close(self._flushed, timeout)
            self._spool.remove(self._take_acked())
        self._spool.close()

    def _flushed(self) -> bool:
        """While stopping: send what is spooled, then the retained offline status; true when all acked."""
        self._pump()
        if self._inflight or self._spool.tail_id > self._last_sent_id:
            return False
        if self._offline_mid is None:
            self._offline_mid = self._link.publish(self.topics["status"], self._will(self._link.session)[1],
                                                   qos=1, retain=True)
            return self._offline_mid is None
        return self._offline_acked

    # --- the public, thread-safe surface ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def interval_s(self) -> float:
        return self._interval_s

    @property
    def results_enabled(self) -> bool:
        return self._results_enabled

    @property
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._spool.stats())
        out.update(self._counts)
        out.update(connected=self._link.connected, session=self._link.session, seq=self._spool.seq,
                   connects=self._link.connects, protocol=self._link.protocol_name,
                   commands_handled=self._commands.handled, commands_failed=self._commands.failed)
        return out

    def announce(self) -> None:
        """Publish the retained birth again (the server dropped the last one while it did not take the device)."""
        self._birth_dirty = True

    def connect_when(self, ready: Callable[[], bool] | None) -> None:
        """Connect to the broker only once ``ready()`` is true (the device is enrolled: the server stores
        nothing of an id that is not); until then messages wait in the spool."""
        self._may_connect = ready

    def _connect_allowed(self) -> bool:
        ready = self._may_connect
        if ready is None:
            return True
        try:
            allowed = bool(ready())
        except Exception as exc:
            log.warning("telemetry connect check failed (%s); connecting", exc)
            allowed = True
        if allowed:
            self._may_connect = None  # once is enough
        return allowed

    def record_inference(self, latency_s: float, ok: bool) -> None:
        self._hist.record(latency_s, ok)

    def observe(self, meta: ModelMeta, latency_s: float, ok: bool) -> None:
        """A ``ModelHost`` observer: ``host.add_observer(telemetry.observe)``."""
        self._hist.record(latency_s, ok)

    def record_dropped(self, n: int = 1) -> None:
        with self._counter_lock:
            self._dropped_frames += n

    def set_model(self, meta: ModelMeta | None, runtime: str | None, delegate: str | None) -> None:
        self._model = (ModelRef(name=meta.name, version=meta.version, sha256=meta.sha256 or None)
                       if meta is not None else ModelRef())
        self._runtime, self._delegate = runtime, delegate
        self._birth_dirty = True

    def event(self, type: str, **fields: Any) -> None:
        clash = {"seq", "epoch", "ts"} & fields.keys()
        if clash:
            raise ValueError(f"event fields {sorted(clash)} are set by telemetry itself")
        ts = time.time()
        epoch = self._spool.epoch
        Event.model_validate({"seq": 0, "epoch": epoch, "ts": ts, "type": type})

        def build(seq: int) -> bytes:
            return _dumps({"seq": seq, "epoch": epoch, "ts": ts, "type": type, **fields})

        if self._spool.append("events", build) is None:
            log.warning("event %s could not be spooled", type)

    def publish_result(self, payload: dict[str, Any]) -> None:
        if not self._results_enabled:
            return
        now = time.monotonic()
        rate = self.config.results.max_per_s
        self._results_tokens = min(max(1.0, rate), self._results_tokens + (now - self._results_refill) * rate)
        self._results_refill = now
        if self._results_tokens < 1.0:
            self._counts["results_dropped"] += 1
            return
        self._results_tokens -= 1.0
        if len(self._results) == RESULTS_QUEUE:
            self._counts["results_dropped"] += 1
        self._results.append(_dumps({"ts": time.time(), **payload}))

    def on_command(self, type: str, handler: Callable[[Command], dict[str, Any] | None]) -> None:
        self._commands.register(type, handler)

    def add_provider(self, key: str, fn: Callable[[], dict[str, Any] | None]) -> None:
        if key in TelemetryDoc.model_fields and key not in ("drift", "shadow"):
            raise ValueError(f"telemetry section {key!r} is built in")
        self._providers[key] = fn

    def emit_telemetry(self) -> int | None:
        """Spool one telemetry message now (the worker does this every interval); its seq."""
        now = time.monotonic()
        elapsed = max(now - self._last_emit, 1e-9)
        self._last_emit = now
        summary = self._hist.snapshot(reset=True)
        with self._counter_lock:
            dropped, self._dropped_frames = self._dropped_frames, 0
        doc = TelemetryDoc(
            seq=0, ts=time.time(), model=self._model, runtime=self._runtime, delegate=self._delegate,
            inference=InferenceStats(count=summary.count, errors=summary.errors,
                                     latency_ms=LatencySummary(**summary.latency_ms()),
                                     latency_hist=LatencyHist.model_validate(summary.hist),
                                     fps=round(summary.count / elapsed, 3), dropped_frames=dropped),
            system=SystemStats(**self._sampler.sample()),
            spool={**self._spool.stats(), "sent": self._counts["sent"]},
        ).model_dump(mode="json")
        for key, fn in list(self._providers.items()):
            try:
                section = fn()
            except Exception as exc:
                log.warning("telemetry provider %s failed: %s", key, exc)
                section = {"error": f"{type(exc).__name__}: {exc}"}
            if section is not None:
                doc[key] = section

        def build(seq: int) -> bytes:
            doc["seq"], doc["epoch"] = seq, self._spool.epoch
            return _dumps(doc)

        return self._spool.append("telemetry", build)

    # --- built-in commands (command thread) ------------------------------------------------------

    def _cmd_set_interval(self, command: Command) -> dict[str, Any]:
        value = command.args.get("interval_s")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
            raise ValueError(f"args.interval_s must be a number from {MIN_INTERVAL_S} to {MAX_INTERVAL_S}, "
                             f"got {value!r}")
        self._interval_s = float(value)
        self._next_emit = time.monotonic() + self._interval_s
        return {"interval_s": self._interval_s}

    def _cmd_set_results(self, command: Command) -> dict[str, Any]:
        value = command.args.get("enabled")
        if not isinstance(value, bool):
            raise ValueError(f"args.enabled must be true or false, got {value!r}")
        self._results_enabled = value
        return {"enabled": value}

    # --- worker thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.config.mqtt.enabled and self._connect_allowed():
                    self._link.step(self._stop)
                else:
                    self._stop.wait(0.25)
                if time.monotonic() >= self._next_emit:
                    self._next_emit = time.monotonic() + self._interval_s
                    self.emit_telemetry()
                if self._link.connected:
                    self._pump()
            except Exception:
                log.exception("telemetry worker error")
                self._stop.wait(1.0)

    def _take_acked(self) -> list[int]:
        acked, self._acked = self._acked, []
        return acked

    def _pump(self) -> None:
        if self._acked:
            self._spool.remove(self._take_acked())
        if self._birth_dirty:
            self._publish_birth()
        while self._results:
            if self._link.publish(self.topics["results"], self._results.popleft(), qos=0) is None:
                break
            self._counts["results_sent"] += 1
        room = self.config.mqtt.max_inflight - len(self._inflight)
        if room <= 0 or self._spool.tail_id <= self._last_sent_id:
            return
        for row in self._spool.peek(self._last_sent_id, room):
            mid = self._link.publish(self.topics[row.leaf], row.payload, qos=1)
            if mid is None:
                break
            self._inflight[mid] = row.id
            self._last_sent_id = row.id

    def _publish_birth(self) -> None:
        birth = Birth(session=self._link.session, epoch=self._spool.epoch, agent_version=self.agent_version,
                      model=self._model,
                      runtime=self._runtime, delegate=self._delegate, hw=self.hw,
                      device_class=self.config.server.device_class)
        if self._link.publish(self.topics["status"], birth.model_dump_json().encode(), qos=1,
                              retain=True) is not None:
            self._birth_dirty = False
            self._counts["births"] += 1

    def _will(self, session: int) -> tuple[str, bytes]:
        return self.topics["status"], Will(session=session, epoch=self._spool.epoch).model_dump_json().encode()

    def _on_connected(self, session: int) -> None:
        self._inflight.clear()
        self._last_sent_id = 0
        self._link.subscribe(self.topics["commands"], qos=1)
        self._publish_birth()

    def _on_disconnected(self) -> None:
        self._inflight.clear()
        self._last_sent_id = 0  # everything not acknowledged goes again, in order
        self._birth_dirty = True

    def _on_published(self, mid: int, ok: bool) -> None:
        if mid == self._offline_mid:
            self._offline_acked = True
            return
        row_id = self._inflight.pop(mid, None)
        if row_id is None:
            return
        self._acked.append(row_id)  # a refused message (ACL) would be refused again: it leaves too
        if ok:
            self._counts["sent"] += 1
        else:
            self._counts["rejected"] += 1
            log.warning("broker refused spooled message (row %d)", row_id)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.topics["commands"]:
            self._commands.submit_raw(payload)
