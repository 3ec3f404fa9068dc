"""The inference loop: newest frame from the mailbox → pre-process → ModelHost → results.

The source thread pre-processes each frame for the model serving at the time (``prepare_ahead``), so
that work overlaps the inference of the frame before; a frame prepared for a model swapped out since
is prepared again on the inference thread.

``Pipelines`` keeps the pre/post-processors of the models that serve (built once per model,
so the hot path does no per-frame set-up). The loop thread updates a heartbeat every turn;
the watchdog checks it to tell a stuck inference from an idle one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.daemon.host import ModelHost, NoModelError
from edgefleet.agent.daemon.preprocess import Postprocessor, Preprocessor
from edgefleet.agent.daemon.results import ResultsSink
from edgefleet.agent.daemon.sources import Frame, Mailbox
from edgefleet.agent.runtime.base import Model
from edgefleet.agent.wire import ModelMeta

log = logging.getLogger(__name__)
MAX_LISTED_VALUES = 4096  # results carry full outputs only when they are this small


@dataclass
class Pipeline:
    model: Model
    meta: ModelMeta
    pre: Preprocessor | None  # None: the model has no image input
    post: Postprocessor
    error: str | None = None


class Pipelines:
    """Pre/post-processors per model, for the two most recent models (old one during a swap)."""

    def __init__(self) -> None:
        self._entries: list[Pipeline] = []
        self._lock = threading.Lock()

    def get(self, model: Model, meta: ModelMeta) -> Pipeline:
        with self._lock:
            for entry in self._entries:
                if entry.model is model and entry.meta is meta:
                    return entry
            pre, error = None, None
            try:
                pre = Preprocessor(model.inputs, meta.preprocess)
            except Exception as exc:
                error = str(exc)
            entry = Pipeline(model, meta, pre, Postprocessor(meta, model.outputs), error)
            self._entries = [entry, *self._entries][:2]
            return entry


@dataclass
class Ahead:
    """A frame's feeds, made on the source thread by ``pipeline`` (its model was serving then)."""

    pipeline: Pipeline
    feeds: dict[str, np.ndarray]


def model_ref(meta: ModelMeta | None) -> dict[str, Any]:
    if meta is None:
        return {"name": None, "version": None, "sha256": None}
    return {"name": meta.name, "version": meta.version, "sha256": meta.sha256}


def result_record(frame: Frame, pipeline: Pipeline, outputs: dict[str, np.ndarray], meta: ModelMeta,
                  latency_s: float) -> dict[str, Any]:
    record: dict[str, Any] = {"ts": frame.ts, "seq": frame.seq, "source": frame.origin, "model": model_ref(meta),
                              "latency_ms": round(latency_s * 1000, 3)}
    top = pipeline.post.top_k(outputs)
    if top:
        record["top_k"] = top
    if sum(np.asarray(v).size for v in outputs.values()) <= MAX_LISTED_VALUES:
        record["outputs"] = Postprocessor.as_lists(outputs)
    else:
        record["shapes"] = {name: list(np.asarray(v).shape) for name, v in outputs.items()}
    return record


class InferenceLoop:
    def __init__(self, host: ModelHost, mailbox: Mailbox, pipelines: Pipelines, sink: ResultsSink) -> None:
        self.host = host
        self.mailbox = mailbox
        self.pipelines = pipelines
        self.sink = sink
        self.quality: Any | None = None  # agent.daemon.quality.QualityMonitor: drift and samples per frame
        self.heartbeat = time.monotonic()
        self.busy_since: float | None = None
        self.processed = 0
        self.errors = 0
        self.skipped_no_model = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> InferenceLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stuck_for(self) -> float:
        """Seconds the current inference has been running (0 when idle)."""
        busy = self.busy_since
        return 0.0 if busy is None else time.monotonic() - busy

    def _run(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            frame = self.mailbox.get(timeout=0.25)
            if frame is None:
                continue
            self.busy_since = time.monotonic()
            try:
                self._one(frame)
            except NoModelError:
                self.skipped_no_model += 1
            except Exception as exc:  # a bad frame or a failing model must not end the loop
                self.errors += 1
                self.last_error = str(exc) or type(exc).__name__
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("inference on frame %d failed (%d so far): %s", frame.seq, self.errors,
                                self.last_error)
            finally:
                self.busy_since = None

    def prepare_ahead(self, data: np.ndarray) -> Ahead | None:
        """On the source thread: the serving model's feeds for ``data``, made while the frame before is
        inferred. None when there is nothing to prepare or it failed: the inference thread then pre-processes
        the frame itself and reports what went wrong."""
        serving = self.host.serving()
        if serving is None:
            return None
        pipeline = self.pipelines.get(*serving)
        if pipeline.pre is None:
            return None
        try:
            return Ahead(pipeline, pipeline.pre(data))
        except Exception:
            return None

    def _one(self, frame: Frame) -> None:
        chosen: list[Pipeline] = []
        ahead = frame.ahead

        def prepare(model: Model, meta: ModelMeta) -> dict[str, np.ndarray]:
            if isinstance(ahead, Ahead) and ahead.pipeline.model is model and ahead.pipeline.meta is meta:
                chosen.append(ahead.pipeline)
                return ahead.feeds  # made for the model that serves: a swap since then prepares again
            pipeline = self.pipelines.get(model, meta)
            if pipeline.pre is None:
                raise ValueError(f"cannot feed frames to this model: {pipeline.error}")
            chosen.append(pipeline)
            return pipeline.pre(frame.data)

        start = time.perf_counter()
        outputs, meta, _model = self.host.infer_with(prepare)
        latency = time.perf_counter() - start
        self.processed += 1
        if self.quality is not None:
            self.quality.observe(frame.data, outputs, meta)
        if self.sink.active:
            self.sink.emit(result_record(frame, chosen[0], outputs, meta, latency))
