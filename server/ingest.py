"""Telemetry ingestion: MQTT subscriber (paho) feeding a batched database writer.

- ``status`` (retained births and wills) is subscribed plainly by every replica: a broker never
  sends retained messages to a shared subscription, and applying a status twice is harmless.
- ``telemetry`` and ``events`` go through ``$share/edgefleet/...`` when the broker speaks MQTT 5
  (so replicas split the stream), plain subscriptions with MQTT 3.1.1.
- The writer drains a queue in batches (``telemetry.batch_max`` messages or ``batch_interval_s``).
  Every message is validated first (``server/ingest_validation.py``); refused ones and those of ids
  that are not enrolled are counted (``server/ingest_rejections.py``), never stored. The rest is
  written in one transaction; (device, epoch, seq) duplicates are skipped by a unique constraint with
  insert-ignore. A batch the database refuses is split in halves until the message it refuses is
  alone, so only that message is lost (the broker acknowledged them all). A database that is down
  is waited for: the batch is retried, not dropped.
- Nothing is lost when a replica dies (docs/deploying.md): the session is persistent (clean start
  off, ``mqtt.session_expiry_s``) under the replica's stable client id, and a message is
  acknowledged (PUBACK) only once its batch is written, so what was in flight or queued in this
  process is delivered again when the replica reconnects; a message delivered twice is skipped by
  the unique constraints. A clean stop hands the replica's share over to the others.
"""

from __future__ import annotations

import functools
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from edgefleet.agent.wire import SHARED_GROUP, TOPIC_ROOT, Command
from edgefleet.server.config import MqttSection, TelemetrySection
from edgefleet.server.crud import latency as latency_crud
from edgefleet.server.crud import telemetry as crud
from edgefleet.server.db import Database
from edgefleet.server.ingest_rejections import Rejections
from edgefleet.server.ingest_validation import Accepted, Limits, Rejected, check, unchecked
from edgefleet.server.latency_metrics import FleetLatency

log = logging.getLogger("edgefleet.server.ingest")
RETRY_MAX_S = 10.0
Ack = Callable[[], object]


@dataclass
class IngestStats:
    received: int = 0
    written: int = 0
    batches: int = 0
    last_batch_ms: float = 0.0
    connected: bool = False
    protocol: str = "unknown"
    ts_replaced: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    rejections: Rejections = field(default_factory=Rejections)
    latency: FleetLatency = field(default_factory=FleetLatency)  # the /metrics histogram of what was written

    @property
    def invalid(self) -> int:
        return self.rejections.total


def parse_topic(topic: str) -> tuple[str, str] | None:
    parts = topic.split("/")
    root = TOPIC_ROOT.split("/")
    if len(parts) != len(root) + 2 or parts[: len(root)] != root:
        return None
    return parts[len(root)], parts[len(root) + 1]


def _transient(exc: BaseException) -> bool:
    """A database that is unreachable or busy, as opposed to one that refuses what it was given."""
    return isinstance(exc, InterfaceError) or (isinstance(exc, OperationalError) and not _refusal(exc))


def _refusal(exc: OperationalError) -> bool:
    text = str(exc.orig).lower() if exc.orig is not None else ""
    return "too big" in text or "too many" in text  # SQLite: string or blob too big, too many SQL variables


class BatchWriter:
    """Turns raw (topic, payload, received_at) messages into rows and writes them in batches."""

    def __init__(self, db: Database, section: TelemetrySection, stats: IngestStats,
                 on_batch: Callable[[int, float], None] | None = None, *, validate: bool = True) -> None:
        self.db = db
        self.on_batch = on_batch  # (messages in the batch, seconds to write it), e.g. for /metrics
        self.section = section
        self.stats = stats
        self.validate = validate  # False only for benchmarks/ingest_rate.py's baseline
        self.limits = Limits(max_bytes=section.max_message_kb * 1024, retention_s=section.retention_days * 86400,
                             future_skew_s=section.future_skew_s)
        self.queue: queue.Queue[tuple[str, bytes, float, Ack | None] | None] = queue.Queue(maxsize=200_000)
        self.left_unwritten = False  # a stop found the database down: some messages were not acknowledged
        self._thread = threading.Thread(target=self._loop, name="edgefleet-ingest-writer", daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.queue.put(None)
        self._thread.join(timeout=10)

    def put(self, topic: str, payload: bytes, received_at: float, ack: Ack | None = None) -> None:
        """``ack`` is called once the message's batch is written (in the order messages were put)."""
        self.queue.put((topic, payload, received_at, ack))

    def _loop(self) -> None:
        while not self._stop.is_set() or not self.queue.empty():
            batch: list[tuple[str, bytes, float, Ack | None]] = []
            try:
                first = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if first is None:
                continue
            batch.append(first)
            deadline = time.monotonic() + self.section.batch_interval_s
            while len(batch) < self.section.batch_max:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    break
                batch.append(item)
            if self._write_until_stored([(topic, payload, received_at) for topic, payload, received_at, _ in batch]):
                for *_message, ack in batch:
                    if ack is not None:
                        ack()
            else:  # not acknowledged: the broker delivers them again to this replica's session
                self.left_unwritten = True

    def _write_until_stored(self, batch: list[tuple[str, bytes, float]]) -> bool:
        """Write the batch, waiting for a database that is down; False when stopping left it unwritten."""
        delay = 0.5
        while True:
            try:
                self.write(batch)
                return True
            except Exception as exc:
                if not _transient(exc):
                    log.exception("ingest: a batch of %d messages could not be written", len(batch))
                    return True
                if self._stop.is_set():
                    log.error("ingest: stopping with %d messages unwritten: %s", len(batch), exc)
                    return False
                log.warning("ingest: database unavailable (%s); retrying %d messages in %.1fs",
                            type(exc).__name__, len(batch), delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def write(self, batch: list[tuple[str, bytes, float]]) -> None:
        started = time.perf_counter()
        accepted: list[Accepted] = []
        refused: list[tuple[str, Rejected, float]] = []
        for topic, payload, received_at in batch:
            parsed = parse_topic(topic)
            if parsed is None:
                continue
            device_id, leaf = parsed
            if leaf not in ("telemetry", "events", "status"):
                continue
            result = (check(device_id, leaf, payload, received_at, self.limits) if self.validate
                      else unchecked(device_id, leaf, payload, received_at))
            if isinstance(result, Rejected):
                refused.append((device_id, result, received_at))
            else:
                accepted.append(result)
        with self.db.session() as session:
            enrolled = crud.enrolled_classes(session, device_ids={m.device_id for m in accepted} |
                                             {device_id for device_id, _, _ in refused})
        stored = [m for m in accepted if m.device_id in enrolled]
        for message in accepted:
            if message.device_id not in enrolled:
                refused.append((message.device_id, Rejected("unenrolled", f"{message.leaf}: the id is not enrolled"),
                                message.received_at))
        self._write_split(stored, enrolled)
        for device_id, rejected, received_at in refused:
            self.stats.rejections.add(device_id, rejected, enrolled=device_id in enrolled, at=received_at)
        counts = self.stats.rejections.take_device_counts()
        if counts:
            with self.db.session() as session:
                crud.record_rejections(session, rejected=counts)
        self.stats.batches += 1
        self.stats.last_batch_ms = (time.perf_counter() - started) * 1000
        if self.on_batch is not None:
            self.on_batch(len(batch), self.stats.last_batch_ms / 1000)

    def _write_split(self, messages: list[Accepted], classes: dict[str, str | None]) -> None:
        """Write ``messages`` in one transaction; when the database refuses it, each half on its own."""
        if not messages:
            return
        try:
            stored_latency = self._commit(messages, classes)
        except Exception as exc:
            if _transient(exc):
                raise
            if len(messages) == 1:
                message = messages[0]
                detail = f"{message.leaf}: the database refused it: {type(exc).__name__}"
                self.stats.rejections.add(message.device_id, Rejected("refused_by_database", detail),
                                          enrolled=True, at=message.received_at)
                return
            middle = len(messages) // 2
            self._write_split(messages[:middle], classes)
            self._write_split(messages[middle:], classes)
            return
        for message in messages:
            self.stats.by_kind[message.leaf] = self.stats.by_kind.get(message.leaf, 0) + 1
        self.stats.latency.add_rows(stored_latency)
        self.stats.written += len(messages)

    def _commit(self, messages: list[Accepted], classes: dict[str, str | None]) -> list[dict[str, Any]]:
        """Write ``messages`` in one transaction; the latency rows stored now (for /metrics)."""
        telemetry: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        events: list[dict[str, Any]] = []
        live: dict[str, dict[str, Any]] = {}
        for message in messages:
            row = message.row
            if message.leaf == "telemetry" and row is not None:
                telemetry.append((row, message.latency))
                current = live.setdefault(message.device_id, {"ts_replaced": 0})
                current.update(last_seen=message.received_at, p95_ms=row["p95_ms"], cpu_pct=row["cpu_pct"],
                               model_name=row["model_name"], model_version=row["model_version"],
                               runtime=row["runtime"], delegate=message.delegate)
                current["ts_replaced"] += int(row["ts_replaced"])
            elif message.leaf == "events" and row is not None:
                events.append(row)
                if row["ts_replaced"]:
                    live.setdefault(message.device_id, {"ts_replaced": 0})["ts_replaced"] += 1
        with self.db.session() as session:
            crud.lock_devices(session, device_ids={m.device_id for m in messages if m.status is not None} | set(live))
            stored = crud.insert_telemetry_and_latency(session, rows=telemetry)
            stored_latency = add_to_minutes(session, [hist for _, hist in telemetry if hist is not None], stored,
                                            classes)
            crud.insert_events(session, rows=events)
            for message in messages:
                if message.status is not None:
                    crud.apply_status(session, device_id=message.device_id, status=message.status,
                                      now=message.received_at)
            crud.apply_live(session, updates=live, locked=True)
        self.stats.ts_replaced += sum(int(v["ts_replaced"]) for v in live.values())
        return stored_latency


def store_latency(session: Session, rows: list[dict[str, Any]],
                  classes: dict[str, str | None] | None = None) -> list[dict[str, Any]]:
    """Store the batch's latency histograms and add the new ones (not duplicates) to the fleet's minutes, by the
    devices' ``classes`` (looked up when not given)."""
    return add_to_minutes(session, rows, crud.insert_latency(session, rows=rows), classes)


def add_to_minutes(session: Session, rows: list[dict[str, Any]], stored: set[tuple[str, int, int]],
                   classes: dict[str, str | None] | None = None) -> list[dict[str, Any]]:
    """Add the latency ``rows`` whose (device, epoch, seq) was ``stored`` now (not duplicates) to the fleet's
    minutes, by the devices' ``classes`` (looked up when not given); returns them."""
    new: list[dict[str, Any]] = []
    for row in rows:
        key = (row["device_id"], row["epoch"], row["seq"])
        if key in stored:
            stored.discard(key)  # a message twice in one batch: the first copy is the stored one
            new.append(row)
    if new:
        if classes is None:
            classes = latency_crud.device_classes(session, device_ids={row["device_id"] for row in new})
        latency_crud.add_minutes(session, sums=latency_crud.minute_sums(new, classes))
    return new


class Ingestor:
    """The MQTT side: connect (MQTT 5 when the broker has it), subscribe, hand messages to the writer."""

    def __init__(self, db: Database, mqtt_config: MqttSection, telemetry: TelemetrySection,
                 client_id: str | None = None, on_batch: Callable[[int, float], None] | None = None) -> None:
        self.config = mqtt_config
        self.stats = IngestStats()
        self.writer = BatchWriter(db, telemetry, self.stats, on_batch)
        self.client_id = client_id or f"edgefleet-server-{socket.gethostname()}-{id(self):x}"
        self.client: mqtt.Client | None = None
        self.protocol = mqtt.MQTTv5
        self._connection = 0  # grows at each (re)connect
        self._topics: list[str] = []

    def _make_client(self, protocol: Any, client_id: str | None = None, *, persistent: bool = False) -> mqtt.Client:
        """``persistent``: this replica's session (kept by the broker while it is away, acknowledged by hand)."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or self.client_id, protocol=protocol,
                             clean_session=(not persistent) if protocol == mqtt.MQTTv311 else None,
                             manual_ack=persistent)
        if self.config.username:
            client.username_pw_set(self.config.username, self.config.password)
        if self.config.tls:
            client.tls_set(ca_certs=str(self.config.ca_certs) if self.config.ca_certs else None,
                           certfile=str(self.config.certfile) if self.config.certfile else None,
                           keyfile=str(self.config.keyfile) if self.config.keyfile else None)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        return client

    def _probe_v5(self, timeout: float = 3.0) -> bool:
        """Whether the broker accepts an MQTT 5 connection (False when it refuses or is unreachable)."""
        result: dict[str, bool] = {}
        done = threading.Event()
        client = self._make_client(mqtt.MQTTv5, self.client_id + "-probe")

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
            result["ok"] = not reason.is_failure
            done.set()

        def on_disconnect(*_args: Any) -> None:
            done.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        try:
            client.connect(self.config.host, self.config.port, keepalive=10)
        except OSError:
            return True  # unreachable now: assume MQTT 5 and let paho retry
        client.loop_start()
        done.wait(timeout)
        client.loop_stop()
        try:
            client.disconnect()
        except Exception:
            pass
        return result.get("ok", False)

    def start(self) -> None:
        self.writer.start()
        wants_shared = self.config.shared_subscription
        self.protocol = mqtt.MQTTv5 if self._probe_v5() else mqtt.MQTTv311
        self.stats.protocol = "5" if self.protocol == mqtt.MQTTv5 else "3.1.1"
        shared = self.protocol == mqtt.MQTTv5 and wants_shared is not False
        persistent = self.config.session_expiry_s > 0
        client = self._make_client(self.protocol, persistent=persistent)
        prefix = f"$share/{SHARED_GROUP}/" if shared else ""
        topics = [(f"{TOPIC_ROOT}/+/status", 1), (f"{prefix}{TOPIC_ROOT}/+/telemetry", 1),
                  (f"{prefix}{TOPIC_ROOT}/+/events", 1)]
        self._topics = [topic for topic, _ in topics]
        other = "" if shared else f"$share/{SHARED_GROUP}/"
        stale = [f"{other}{TOPIC_ROOT}/+/telemetry", f"{other}{TOPIC_ROOT}/+/events"]

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
            if reason.is_failure:
                log.warning("ingest: broker refused the connection: %s", reason)
                return
            self.stats.connected = True
            self._connection += 1
            c.subscribe(topics)
            if persistent:  # a session kept from a run with the other form would deliver everything twice
                c.unsubscribe(stale)
            log.info("ingest: connected (MQTT %s), subscribed %s", self.stats.protocol, [t for t, _ in topics])

        def on_disconnect(*_args: Any) -> None:
            self.stats.connected = False

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            self.stats.received += 1
            ack = functools.partial(self._ack, self._connection, message.mid, message.qos) if persistent else None
            self.writer.put(message.topic, bytes(message.payload), time.time(), ack)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        if self.protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.config.session_expiry_s
            properties.ReceiveMaximum = self.config.receive_maximum
            client.connect_async(self.config.host, self.config.port, keepalive=30, clean_start=not persistent,
                                 properties=properties)
        else:
            client.connect_async(self.config.host, self.config.port, keepalive=30)
        client.loop_start()
        self.client = client

    def _ack(self, connection: int, mid: int, qos: int) -> None:
        """PUBACK on the connection the message came on; after a reconnect the broker sends it again (and its
        packet id may already name another message), so that copy is the one acknowledged."""
        if self.client is not None and connection == self._connection:
            self.client.ack(mid, qos)

    def publish_command(self, device_id: str, command: Command) -> None:
        if self.client is None or not self.stats.connected:
            raise ConnectionError("not connected to the MQTT broker")
        info = self.client.publish(f"{TOPIC_ROOT}/{device_id}/commands", command.model_dump_json(), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")

    def stop(self) -> None:
        if self.client is not None:
            if self.protocol == mqtt.MQTTv5 and self.config.session_expiry_s > 0 and self.stats.connected:
                self._hand_over(self.client)
            else:
                self.client.disconnect()
            self.client.loop_stop()
        self.writer.stop()

    def _hand_over(self, client: mqtt.Client, timeout: float = 5.0) -> None:
        """A clean stop ends this replica's session, so the broker sends its share of the shared subscription to
        the other replicas instead of keeping it for a restart: unsubscribe, write and acknowledge what is still
        arriving, then disconnect with a session expiry of 0. (A crash leaves the session to hold the backlog.)"""
        unsubscribed = threading.Event()
        client.on_unsubscribe = lambda *_args: unsubscribed.set()
        client.unsubscribe(self._topics)
        unsubscribed.wait(timeout)
        time.sleep(0.2)  # messages the broker had sent before the UNSUBACK
        self.writer.stop()  # writes what is queued and acknowledges it on this connection
        if self.writer.left_unwritten:  # keep the session: the broker has them for this replica's next start
            client.disconnect()
            return
        properties = Properties(PacketTypes.DISCONNECT)
        properties.SessionExpiryInterval = 0
        client.disconnect(properties=properties)
