"""ModelHost: the model that serves right now, swapped between two inferences.

Every inference takes a reference to the current ``Served`` entry and runs on it; a swap
replaces the reference (new requests go to the new model at once), then waits until the
old entry's in-flight calls drain before closing it. No request ever sees a half-swapped
model, and none fails because of a swap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from edgefleet.agent.runtime.base import Model
from edgefleet.agent.wire import ModelMeta

# Called after every inference with (meta of the model that served, latency in s, ok).
InferenceObserver = Callable[[ModelMeta, float, bool], None]
# Called after every swap with the model that serves now and its meta.
SwapListener = Callable[[Model, ModelMeta], None]
# Called on the serving thread after every successful inference with (feeds, outputs, meta); must be cheap.
InferenceTap = Callable[[Mapping[str, np.ndarray], dict[str, np.ndarray], ModelMeta], None]
log = logging.getLogger(__name__)


class NoModelError(RuntimeError):
    """Raised by ModelHost.infer while no model is loaded."""


@dataclass
class Served:
    model: Model
    meta: ModelMeta
    in_flight: int = 0
    draining: bool = False  # a swap waits on ``drained``: the last call out notifies it
    lock: threading.Lock = field(default_factory=threading.Lock)  # a plain lock: taken twice per inference
    drained: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.drained = threading.Condition(self.lock)


class ModelHost:
    def __init__(self) -> None:
        self._current: Served | None = None
        self._observers: list[InferenceObserver] = []
        self._swap_listeners: list[SwapListener] = []
        self._taps: list[InferenceTap] = []
        self._swap_lock = threading.Lock()

    @property
    def meta(self) -> ModelMeta | None:
        current = self._current
        return current.meta if current is not None else None

    def serving(self) -> tuple[Model, ModelMeta] | None:
        """The model that serves now and its meta, read together (a swap replaces both at once)."""
        current = self._current
        return (current.model, current.meta) if current is not None else None

    @property
    def model(self) -> Model | None:
        current = self._current
        return current.model if current is not None else None

    def add_observer(self, observer: InferenceObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: InferenceObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def add_tap(self, tap: InferenceTap) -> None:
        """``tap(feeds, outputs, meta)`` after each successful inference; its exceptions are logged, never raised."""
        self._taps = [*self._taps, tap]

    def remove_tap(self, tap: InferenceTap) -> None:
        self._taps = [t for t in self._taps if t is not tap]

    def add_swap_listener(self, listener: SwapListener) -> None:
        """``listener(model, meta)`` runs after every swap, whoever made it (start-up, OTA, rollback)."""
        self._swap_listeners.append(listener)

    def _acquire(self) -> Served:
        while True:
            served = self._current
            if served is None:
                raise NoModelError("no model is loaded yet")
            with served.lock:
                if self._current is served:
                    served.in_flight += 1
                    return served
            # swapped between the read and the lock: take the new one

    @staticmethod
    def _release(served: Served) -> None:
        with served.lock:
            served.in_flight -= 1
            if served.draining and served.in_flight == 0:
                served.drained.notify_all()

    def infer(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], ModelMeta]:
        """Run the current model; returns its outputs and the meta of the model that served."""
        outputs, meta, _model = self.infer_with(lambda _model, _meta: feeds)
        return outputs, meta

    def infer_with(
        self, prepare: Callable[[Model, ModelMeta], Mapping[str, np.ndarray]]
    ) -> tuple[dict[str, np.ndarray], ModelMeta, Model]:
        """Like ``infer``, with the feeds made by ``prepare`` for the very model that will serve them.

        ``prepare`` runs while the model is held (a swap waits for it), so pre-processing and
        inference always see the same model. An error raised by ``prepare`` is the caller's
        (bad input): it propagates and is not reported to the observers as a failed inference.
        """
        served = self._acquire()
        try:
            feeds = prepare(served.model, served.meta)
        except BaseException:
            self._release(served)
            raise
        start = time.perf_counter()
        ok = False
        try:
            outputs = served.model.infer(feeds)
            ok = True
        finally:
            latency = time.perf_counter() - start
            self._release(served)
            for observer in self._observers:
                observer(served.meta, latency, ok)
        for tap in self._taps:
            try:
                tap(feeds, outputs, served.meta)
            except Exception:  # a tap never fails a request
                log.exception("inference tap failed")
        return outputs, served.meta, served.model

    def swap(self, model: Model, meta: ModelMeta, *, close_old: bool = True,
             drain_timeout_s: float = 30.0) -> tuple[Model, ModelMeta] | None:
        """Make ``model`` the serving model; return the previous (model, meta) once drained.

        With ``close_old`` the previous model is closed after its in-flight calls finish
        (``None`` is returned then, as nothing is left to hand back).
        """
        with self._swap_lock:
            old = self._current
            self._current = Served(model, meta)
            for listener in self._swap_listeners:
                listener(model, meta)
            if old is None:
                return None
            with old.drained:
                old.draining = True
                old.drained.wait_for(lambda: old.in_flight == 0, timeout=drain_timeout_s)
            if close_old:
                old.model.close()
                return None
            return old.model, old.meta
