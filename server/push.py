"""Push: after a rollout changes devices' desired state, tell those devices over MQTT to check in now.

A ``check_update`` command (commands topic, docs/rollouts.md "Push") goes to every device whose desired
state a rollout of ``push: true`` changed: a wave's devices when the wave starts (the first at creation, the
next ones from the rollout tick, devices that joined meanwhile on resume) and the devices an abort sends back
(revert). Polling stays the fallback: a device that misses the command learns of the change at its next poll.

- After the commit, never inside it: ``note_push`` records the devices in the transaction's session; the
  ``Pusher`` listens to the session factory's ``after_commit`` and takes them then (a rollback drops them). No
  publish happens in a transaction or under the rollout lock, and a request never waits for one.
- One replica per change: the replica whose transaction committed the change pushes it (the rollout tick
  runs on the lease holder, an operator's action on the replica that answered it; the rollout row lock and
  its state check let only one transaction start a wave). What a replica that dies mid-spread still had
  queued is pushed again by the lease holder (below).
- Spread: a batch of N devices goes out evenly over ``max(push_spread_s, N / push_rate_per_s)``, the first
  at once, so check-ins and downloads do not arrive as one stampede; batches go out in commit order. A device
  still waiting in an earlier batch is not queued again (its one check-in sees the newest state).
- Window: with ``push_max_in_flight`` N, a push goes out only while fewer than N devices this replica pushed
  are online and have not fetched the update yet (``crud.rollouts.not_fetched``: state assigned, idle or
  downloading), each for at most ``push_in_flight_timeout_s`` after its push. A server slower than the rate
  thus slows the push to the pace it serves updates, instead of queueing check-ins and downloads until they
  time out; the state comes from the database, so it holds whichever replica serves the devices.
- Again: the replica leading the rollouts pushes once more, every ``push_in_flight_timeout_s / 4``, the
  devices still online and not past the download ``push_in_flight_timeout_s`` after their wave gave them
  the version, unless it pushed them itself within that long (``push_again``). A replica that dies
  mid-spread, or a command the broker lost, then costs that long instead of a poll interval.
- A broker that is down or refuses costs only the push: failures are counted (``/metrics``) and logged in
  one line per batch.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.agent.wire import Command

log = logging.getLogger("edgefleet.server.push")
NOTES = "edgefleet.push"  # key of the pending pushes in Session.info
MAX_PENDING = 1_000_000  # devices waiting for their push; beyond, a batch is dropped (counted)
WINDOW_REFRESH_S = 0.5  # how often a full window asks the database which pushed devices have fetched
Publish = Callable[[str, Command], None]
# rollout id -> pushed device ids  ->  the (rollout id, device id) pairs still owing their fetch
NotFetched = Callable[[dict[int, list[str]]], set[tuple[int, str]]]


@dataclass(frozen=True)
class Batch:
    rollout_id: int
    why: str  # "wave 2", "revert", ...
    device_ids: tuple[str, ...]


def note_push(session: Session, *, rollout_id: int, why: str, device_ids: Iterable[str]) -> None:
    """Push ``check_update`` to these devices once this session's transaction commits."""
    ids = tuple(device_ids)
    if ids:
        session.info.setdefault(NOTES, []).append(Batch(rollout_id, why, ids))


def spacing_s(devices: int, *, spread_s: float, rate_per_s: float) -> float:
    """Seconds between two publishes of one batch: spread over the window, never faster than the rate."""
    return max(spread_s / max(devices, 1), 1.0 / rate_per_s)


class Pusher:
    """The background publisher of one replica (a daemon thread; ``publish`` raises ``ConnectionError``)."""

    def __init__(self, publish: Publish, *, spread_s: float, rate_per_s: float,
                 max_pending: int = MAX_PENDING, max_in_flight: int = 0, in_flight_timeout_s: float = 60.0,
                 not_fetched: NotFetched | None = None) -> None:
        self.publish = publish
        self.spread_s = spread_s
        self.rate_per_s = rate_per_s
        self.max_pending = max_pending
        self.window = Window(max_in_flight if not_fetched else 0, in_flight_timeout_s, not_fetched)
        self.sent = self.failed = self.dropped = self.batches = self.again = 0
        self._last_pushed: dict[str, float] = {}  # device id -> monotonic time this replica last pushed it
        self._queue: deque[Batch] = deque()
        self._pending: set[str] = set()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- wiring ---------------------------------------------------------------------------------

    def attach(self, factory: sessionmaker[Session]) -> None:
        event.listen(factory, "after_commit", self._committed)
        event.listen(factory, "after_rollback", self._rolled_back)

    def detach(self, factory: sessionmaker[Session]) -> None:
        for name, handler in (("after_commit", self._committed), ("after_rollback", self._rolled_back)):
            if event.contains(factory, name, handler):
                event.remove(factory, name, handler)

    def _committed(self, session: Session) -> None:
        for batch in session.info.pop(NOTES, ()):
            self.submit(batch)

    @staticmethod
    def _rolled_back(session: Session) -> None:
        session.info.pop(NOTES, None)

    # --- queue ----------------------------------------------------------------------------------

    def submit(self, batch: Batch) -> None:
        """Queue a batch (never blocks; called in the committing thread)."""
        with self._cond:
            fresh = tuple(dict.fromkeys(d for d in batch.device_ids if d not in self._pending))
            if not fresh:
                return
            if len(self._pending) + len(fresh) > self.max_pending:
                self.dropped += len(fresh)
                log.warning("push: rollout %s %s: %d pushes dropped (%d already waiting); those devices learn of "
                            "it at their next poll", batch.rollout_id, batch.why, len(fresh), len(self._pending))
                return
            self._pending.update(fresh)
            self._queue.append(Batch(batch.rollout_id, batch.why, fresh))
            self._cond.notify()

    def push_again(self, stragglers: dict[int, list[str]]) -> int:
        """Queue these devices (rollout id -> device ids) once more, but none this replica pushed within
        ``push_in_flight_timeout_s``; how many were queued."""
        cutoff = time.monotonic() - self.window.timeout_s
        queued = 0
        with self._cond:
            for device_id in [d for d, at in self._last_pushed.items() if at < cutoff]:
                del self._last_pushed[device_id]
            again = {rollout_id: [d for d in ids if d not in self._last_pushed and d not in self._pending]
                     for rollout_id, ids in stragglers.items()}
        for rollout_id, ids in again.items():
            if ids:
                log.info("push: rollout %s: %d devices given the version over %.0fs ago have not fetched it; "
                         "pushing them again", rollout_id, len(ids), self.window.timeout_s)
                self.submit(Batch(rollout_id, "again", tuple(ids)))
                queued += len(ids)
        self.again += queued
        return queued

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="edgefleet-push", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop publishing; what was still waiting is left to the devices' polls."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # --- publishing -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(1.0)
                if self._stop.is_set():
                    return
                batch = self._queue.popleft()
            self._send(batch)

    def _send(self, batch: Batch) -> None:
        gap = spacing_s(len(batch.device_ids), spread_s=self.spread_s, rate_per_s=self.rate_per_s)
        started = next_at = time.monotonic()
        sent = failed = 0
        held_s = 0.0
        first_error: str | None = None
        for device_id in batch.device_ids:
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            waited = self.window.wait_for_room(self._stop)
            if waited is None:
                return
            if waited:
                held_s += waited
                next_at = time.monotonic()  # after a hold, on at the batch's pace (no burst to catch up)
            next_at += gap
            with self._cond:
                self._pending.discard(device_id)
            try:
                self.publish(device_id, Command(id=uuid.uuid4().hex, type="check_update",
                                                args={"rollout_id": batch.rollout_id}))
                self.window.pushed(batch.rollout_id, device_id)
                with self._cond:
                    self._last_pushed[device_id] = time.monotonic()
                sent += 1
            except (ConnectionError, OSError, ValueError) as exc:
                failed += 1
                first_error = first_error or str(exc)
        self.sent += sent
        self.failed += failed
        self.batches += 1
        took = time.monotonic() - started
        if failed:
            log.warning("push: rollout %s %s: %d of %d pushes failed (%s); those devices learn of it at their "
                        "next poll", batch.rollout_id, batch.why, failed, sent + failed, first_error)
        else:
            log.info("push: rollout %s %s: check_update sent to %d devices over %.1fs%s", batch.rollout_id,
                     batch.why, sent, took, f" ({held_s:.1f}s held with {self.window.limit} devices yet to "
                     "fetch the update)" if held_s >= 0.05 else "")


class Window:
    """The pushed devices that still owe the server their check-in and download (at most ``limit``; 0: no
    bound). Used by the pusher's thread only, apart from ``size`` (a metric)."""

    def __init__(self, limit: int, timeout_s: float, not_fetched: NotFetched | None) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.not_fetched = not_fetched
        self.held_s = 0.0  # seconds pushes waited for room, all batches
        self._pushed_at: dict[tuple[int, str], float] = {}

    def size(self) -> int:
        return len(self._pushed_at)

    def pushed(self, rollout_id: int, device_id: str) -> None:
        if self.limit:
            self._pushed_at[(rollout_id, device_id)] = time.monotonic()

    def wait_for_room(self, stop: threading.Event) -> float | None:
        """Seconds waited until a push may go out; None when stopped meanwhile."""
        if not self.limit or len(self._pushed_at) < self.limit:
            return 0.0
        started = time.monotonic()
        while True:
            self._refresh()
            if len(self._pushed_at) < self.limit:
                waited = time.monotonic() - started
                self.held_s += waited
                return waited
            if stop.wait(WINDOW_REFRESH_S):
                return None

    def _refresh(self) -> None:
        expired_before = time.monotonic() - self.timeout_s
        for key in [k for k, at in self._pushed_at.items() if at < expired_before]:
            del self._pushed_at[key]
        asked: dict[int, list[str]] = {}
        for rollout_id, device_id in self._pushed_at:
            asked.setdefault(rollout_id, []).append(device_id)
        if not asked or self.not_fetched is None:
            return
        try:
            waiting = self.not_fetched(asked)
        except Exception as exc:  # a database that does not answer: pushes wait for the timeout instead
            log.warning("push: cannot read which pushed devices fetched the update (%s); waiting up to %.0fs "
                        "per push", exc, self.timeout_s)
            return
        for key in [k for k in self._pushed_at if k not in waiting]:
            del self._pushed_at[key]


class PushCollector(Collector):
    """``/metrics``: pushes sent, failed and dropped, and how many wait."""

    def __init__(self, pusher: Pusher) -> None:
        self.pusher = pusher

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        pusher = self.pusher
        for name, text, value in (
                ("edgefleet_push_sent", "check_update commands a rollout pushed to devices", pusher.sent),
                ("edgefleet_push_failed", "Pushes the broker did not take (the device learns at its next poll)",
                 pusher.failed),
                ("edgefleet_push_dropped", "Pushes dropped because too many were waiting", pusher.dropped),
                ("edgefleet_push_again", "Devices pushed once more: still not fetched push_in_flight_timeout_s "
                 "after their wave started", pusher.again)):
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], float(value))
            yield counter
        waiting = GaugeMetricFamily("edgefleet_push_pending", "Devices waiting for their push")
        waiting.add_metric([], float(pusher.pending()))
        yield waiting
        in_flight = GaugeMetricFamily("edgefleet_push_in_flight",
                                      "Pushed devices, online, that have not fetched the update yet (the window)")
        in_flight.add_metric([], float(pusher.window.size()))
        yield in_flight
        held = CounterMetricFamily("edgefleet_push_held_seconds",
                                   "Seconds pushes waited because the window was full (rollouts.push_max_in_flight)")
        held.add_metric([], pusher.window.held_s)
        yield held


def publisher_of(state: Any) -> Publish:
    """Publish through the replica's MQTT connection (``state.ingestor``, set once it started)."""

    def publish(device_id: str, command: Command) -> None:
        ingestor = state.ingestor
        if ingestor is None:
            raise ConnectionError("MQTT is not started")
        ingestor.publish_command(device_id, command)

    return publish


__all__ = ["Batch", "NotFetched", "PushCollector", "Pusher", "Window", "note_push", "publisher_of", "spacing_s"]
