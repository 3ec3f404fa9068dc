"""In-process checks of the daemon's parts: pre-processing, notifier, results rotation, mailbox."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.config import ResultsSection
from edgefleet.agent.daemon.preprocess import Postprocessor, Preprocessor, detect_layout
from edgefleet.agent.daemon.results import ResultsSink
from edgefleet.agent.daemon.sources import Frame, Mailbox, Source, SourceEnded, SourceRunner
from edgefleet.agent.daemon.systemd import Notifier
from edgefleet.agent.errors import InvalidInputError
from edgefleet.agent.wire import ModelMeta, PreprocessSpec, TensorSpec
from tests.daemon.notify import NotifySocket


def spec(shape: list[int | None], dtype: str = "float32", scale: float | None = None,
         zero_point: int | None = None) -> list[TensorSpec]:
    return [TensorSpec(name="x", shape=shape, dtype=dtype, scale=scale, zero_point=zero_point)]


BGR = np.zeros((2, 4, 3), dtype=np.uint8)
BGR[..., 0], BGR[..., 1], BGR[..., 2] = 10, 20, 30  # blue, green, red


def test_default_float_nchw_rgb_scaled() -> None:
    tensor = Preprocessor(spec([1, 3, 2, 4]))(BGR)["x"]
    assert tensor.shape == (1, 3, 2, 4) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, :, 0, 0], np.array([30, 20, 10]) / 255, rtol=1e-6)


def test_default_uint8_nhwc_raw_and_gray() -> None:
    tensor = Preprocessor(spec([1, 2, 4, 3], "uint8"))(BGR)["x"]
    assert tensor.dtype == np.uint8 and tensor[0, 0, 0].tolist() == [30, 20, 10]
    gray = Preprocessor(spec([1, 2, 4, 1], "uint8"))(BGR)["x"]
    assert gray.shape == (1, 2, 4, 1) and int(gray[0, 0, 0, 0]) == 22  # 0.299 R + 0.587 G + 0.114 B


def test_mean_std_bgr_and_int8_quantization() -> None:
    pre = Preprocessor(spec([1, 2, 4, 3]), PreprocessSpec(color="BGR", scale=1.0, mean=[10, 20, 30], std=[2, 4, 5]))
    np.testing.assert_allclose(pre(BGR)["x"][0, 1, 3], [0, 0, 0])
    quant = Preprocessor(spec([1, 2, 4, 3], "int8", scale=1 / 128, zero_point=0),
                         PreprocessSpec(scale=1 / 127.5, mean=[1.0]))  # [-1, 1] into int8 with scale 1/128
    values = quant(BGR)["x"][0, 0, 0]
    expected = np.clip(np.rint((np.array([30, 20, 10]) / 127.5 - 1.0) * 128), -128, 127)
    assert values.dtype == np.int8 and values.tolist() == expected.tolist()


def test_resize_modes() -> None:
    frame = np.full((100, 200, 3), 200, dtype=np.uint8)
    box = Preprocessor(spec([1, 50, 50, 3], "uint8"), PreprocessSpec(resize="letterbox"))(frame)["x"][0]
    assert box.shape == (50, 50, 3)
    assert box[0, 0].tolist() == [114] * 3 and box[25, 25].tolist() == [200] * 3  # bands top and bottom
    frame[:, :50] = 0  # a dark left quarter is cut away by center_crop
    crop = Preprocessor(spec([1, 50, 50, 3], "uint8"), PreprocessSpec(resize="center_crop"))(frame)["x"][0]
    assert crop.min() == 200
    stretch = Preprocessor(spec([1, 3, 10, 30]))(frame)["x"]
    assert stretch.shape == (1, 3, 10, 30)


def test_layout_detection_and_bad_specs() -> None:
    assert detect_layout([None, 3, 224, 224]) == "NCHW" and detect_layout([1, 224, 224, 3]) == "NHWC"
    with pytest.raises(InvalidInputError, match="no image-shaped"):
        Preprocessor(spec([1, 10]))
    with pytest.raises(InvalidInputError, match="3 channels"):
        Preprocessor(spec([1, 8, 8, 3]), PreprocessSpec(mean=[1, 2]))


def test_top_k_with_labels_and_dequantized_scores() -> None:
    meta = ModelMeta(name="m", task="classification", labels=["a", "b", "c"])
    post = Postprocessor(meta, [TensorSpec(name="p", shape=[1, 3], dtype="uint8", scale=0.5, zero_point=10)], k=2)
    top = post.top_k({"p": np.array([[12, 30, 20]], dtype=np.uint8)})
    assert top == [{"index": 1, "label": "b", "score": 10.0}, {"index": 2, "label": "c", "score": 5.0}]
    other = Postprocessor(meta.model_copy(update={"task": "other"}), list(post.specs.values()))
    assert other.top_k({"p": np.array([[1, 2, 3]])}) == []


def test_notifier_abstract_socket_and_watchdog_interval(tmp_path: Path) -> None:
    assert not Notifier({}).ready()  # nothing happens without NOTIFY_SOCKET
    sock = NotifySocket(abstract=f"edgefleet-unit-{os.getpid()}")
    try:
        notifier = Notifier({"NOTIFY_SOCKET": sock.env_value, "WATCHDOG_USEC": "3000000"})
        assert notifier.watchdog_interval_s == 1.5
        assert notifier.ready("serving m v1") and notifier.watchdog() and notifier.stopping()
        sock.collect("STOPPING=1", timeout=2)
        assert sock.messages == ["READY=1\nSTATUS=serving m v1", "WATCHDOG=1", "STOPPING=1"]
    finally:
        sock.close()
    other_pid = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval_s is None and not other_pid.ready()  # a send error is not fatal


def test_results_file_rotation(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    sink = ResultsSink(ResultsSection(file=path, file_max_mb=0.001, file_keep=2), None)
    for i in range(100):
        sink.emit({"i": i, "pad": "x" * 40})
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]
    assert all(p.stat().st_size <= 1048 for p in tmp_path.iterdir())
    last = [json.loads(line)["i"] for line in path.read_text().splitlines()]
    assert last[-1] == 99 and last == list(range(last[0], 100))


def test_mailbox_newest_wins_and_counts_drops() -> None:
    box = Mailbox()
    frames = [Frame(np.zeros(1), seq, 0.0, "t") for seq in range(5)]
    for frame in frames:
        box.put(frame)
    got = box.get(0.1)
    assert got is not None and got.seq == 4 and box.dropped == 4 and box.get(0.01) is None
    stop = threading.Event()
    box.put(frames[0])
    box.put(frames[1], wait=stop)  # lossless puts take the two places; a live frame waiting holds none
    box.put(frames[2], wait=stop)
    waiter = threading.Thread(target=box.put, args=(frames[3],), kwargs={"wait": stop})
    waiter.start()  # a third lossless put waits for a place
    waiter.join(0.3)
    assert waiter.is_alive()
    assert box.get(0.1).seq == 0  # type: ignore[union-attr]
    waiter.join(0.3)
    assert waiter.is_alive()  # taking the live frame freed no place
    assert box.get(0.1).seq == 1  # type: ignore[union-attr]
    waiter.join(2)
    assert [box.get(0.1).seq for _ in range(2)] == [2, 3] and box.dropped == 4  # type: ignore[union-attr]


def test_mailbox_hands_every_frame_of_a_lossless_source_over_in_order_and_stops_waiting() -> None:
    """Threads on both sides, 20,000 frames: a lossless put waits for a place, so each arrives once and in
    order; a live put replaces the frames lossless puts left and frees their places; a stop ends a wait."""
    box, stop, count = Mailbox(), threading.Event(), 20_000

    def produce() -> None:
        for seq in range(count):
            box.put(Frame(np.zeros(1), seq, 0.0, "t"), wait=stop)

    producer = threading.Thread(target=produce)
    producer.start()
    seen = []
    while len(seen) < count:
        frame = box.get(5.0)
        assert frame is not None, f"stalled after {len(seen)} frames"
        seen.append(frame.seq)
    producer.join(5)
    assert seen == list(range(count)) and (box.dropped, box.delivered) == (0, count)
    box.put(Frame(np.zeros(1), 1, 0.0, "lossless"), wait=stop)
    box.put(Frame(np.zeros(1), 1, 0.0, "lossless"), wait=stop)
    box.put(Frame(np.zeros(1), 2, 0.0, "lossy"))
    assert box.get(0.1).origin == "lossy" and box.dropped == 2 and box.get(0.01) is None  # type: ignore[union-attr]
    box.put(Frame(np.zeros(1), 3, 0.0, "lossless"), wait=stop)  # the places were freed: no wait
    box.put(Frame(np.zeros(1), 3, 0.0, "lossless"), wait=stop)
    blocked = threading.Thread(target=box.put, args=(Frame(np.zeros(1), 4, 0.0, "t"),), kwargs={"wait": stop})
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()
    stop.set()
    blocked.join(1)
    assert not blocked.is_alive()
    assert [box.get(0.1).seq for _ in range(2)] == [3, 3] and box.get(0.05) is None  # type: ignore[union-attr]


def test_opencv_fast_path_equals_the_numpy_path() -> None:
    frame = np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    for layout_shape in ([1, 3, 32, 32], [1, 32, 32, 3]):
        pre = Preprocessor(spec(layout_shape), PreprocessSpec(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
        assert pre._blob is not None
        fast = pre(frame)["x"]
        pre._blob = None
        np.testing.assert_allclose(fast, pre(frame)["x"], rtol=1e-5, atol=1e-5)


class _Camera(Source):
    """A device-paced source: frames arrive every ``period`` seconds give or take ``jitter``."""

    paced = False

    def __init__(self, period: float, jitter: float, count: int) -> None:
        self.period, self.jitter, self.left = period, jitter, count
        self.rng = np.random.default_rng(0)
        self.due = time.monotonic()
        self.frame = np.zeros((4, 4, 3), np.uint8)

    def read(self) -> tuple[np.ndarray, str] | None:
        if self.left == 0:
            raise SourceEnded("done")
        self.due += self.period
        time.sleep(max(0.0, self.due + self.rng.uniform(-self.jitter, self.jitter) - time.monotonic()))
        self.left -= 1
        return self.frame, "camera"


@pytest.mark.parametrize(("camera_fps", "want"), [(40.0, (38, 42)), (20.0, (39, 40)), (10.0, (20, 20)),
                                                  (5.0, (10, 10))])
def test_device_paced_source_passes_fps_frames_whatever_the_jitter(camera_fps: float,
                                                                   want: tuple[int, int]) -> None:
    """fps: 20 for 2 s: a faster camera is thinned to 20/s; one at 20, 10 or 5 fps keeps every frame."""
    mailbox = Mailbox()
    runner = SourceRunner(_Camera(1.0 / camera_fps, jitter=0.3 / camera_fps, count=int(camera_fps * 2)),
                          mailbox, fps=20.0).start()
    deadline = time.monotonic() + 30
    while (runner.state != "ended" or mailbox.get(0.0) is not None) and time.monotonic() < deadline:
        mailbox.get(0.05)
    assert mailbox.dropped == 0
    assert want[0] <= mailbox.delivered <= want[1], (camera_fps, mailbox.delivered)
