"""Pre-processing on the source thread, with the real ONNX Runtime backend: a frame prepared for the model
that serves is inferred on exactly those feeds (the inference thread does not pre-process it again); one
prepared for a model swapped out since, or that the source thread could not prepare, is prepared again for
the model that serves it."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgefleet.agent.config import ResultsSection
from edgefleet.agent.daemon.host import ModelHost
from edgefleet.agent.daemon.loop import Ahead, InferenceLoop, Pipelines
from edgefleet.agent.daemon.results import ResultsSink
from edgefleet.agent.daemon.sources import Frame, Mailbox, Source, SourceRunner
from edgefleet.agent.runtime.base import LoadOptions
from edgefleet.agent.runtime.onnx import load
from edgefleet.agent.wire import ModelMeta, PreprocessSpec
from tests.support.models import make_onnx_image_classifier

SIZE = 32


class _Frames(Source):
    kind = "test"
    lossless = True

    def __init__(self, count: int) -> None:
        rng = np.random.default_rng(0)
        self.frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(count)]

    def read(self) -> tuple[np.ndarray, str] | None:
        if not self.frames:
            time.sleep(0.01)
            return None
        return self.frames.pop(0), "test"


def test_frames_prepared_on_the_source_thread_are_inferred_on_those_feeds_until_a_swap(tmp_path: Path) -> None:
    options = LoadOptions(threads=1, providers=("CPUExecutionProvider",))
    v1 = load(make_onnx_image_classifier(tmp_path / "v1.onnx", size=SIZE, seed=0), options)
    v2 = load(make_onnx_image_classifier(tmp_path / "v2.onnx", size=SIZE, seed=1), options)
    spec = PreprocessSpec(scale=1 / 255)
    meta1 = ModelMeta(name="cls", version=1, task="classification", preprocess=spec)
    meta2 = ModelMeta(name="cls", version=2, task="classification", preprocess=spec)
    host, mailbox, pipelines = ModelHost(), Mailbox(), Pipelines()
    host.swap(v1, meta1)
    loop = InferenceLoop(host, mailbox, pipelines, ResultsSink(ResultsSection(), None))
    made_on: list[str] = []
    served: list[tuple[int, Mapping[str, np.ndarray]]] = []
    host.add_tap(lambda feeds, _outputs, meta: served.append((meta.version, feeds)))

    pipeline1 = pipelines.get(v1, meta1)
    pre1 = pipeline1.pre
    assert pre1 is not None

    def counted(data: np.ndarray) -> dict[str, np.ndarray]:
        made_on.append(threading.current_thread().name)
        return pre1(data)

    pipeline1.pre = counted  # type: ignore[assignment]  # the same call, counted
    loop.start()
    runner = SourceRunner(_Frames(50), mailbox, fps=1000.0, prepare=loop.prepare_ahead).start()
    try:
        deadline = time.monotonic() + 30
        while loop.processed < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loop.processed == 50 and loop.errors == 0
        assert made_on == ["source-test"] * 50  # none again on the inference thread
        assert all(version == 1 for version, _ in served)
    finally:
        runner.stop()
        loop.stop()

    frame = np.full((48, 64, 3), 200, np.uint8)
    stale = loop.prepare_ahead(frame)
    assert isinstance(stale, Ahead) and stale.pipeline is pipeline1
    host.swap(v2, meta2, close_old=False)
    served.clear()
    loop._one(Frame(frame, 1, 0.0, "test", stale))  # prepared for v1; v2 serves now
    loop._one(Frame(frame, 2, 0.0, "test", None))  # the source thread could not prepare it
    assert [version for version, _ in served] == [2, 2]
    expected = pipelines.get(v2, meta2).pre(frame)  # type: ignore[misc]
    for _, feeds in served:
        assert feeds is not stale.feeds
        np.testing.assert_array_equal(feeds["image"], expected["image"])
    assert made_on == ["source-test"] * 50 + ["MainThread"]  # the stale one above; v1's pre ran no more
    for model in (v1, v2):
        model.close()
