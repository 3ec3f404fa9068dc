"""Where frames come from: camera, video file, stream, folder of images, synthetic, none.

A ``Source`` opens, reads frames and closes. ``SourceRunner`` drives one in a thread: a file
is read at ``fps``; a camera or stream is read as it delivers, and at most ``fps`` frames a
second are passed on, on a schedule that absorbs jitter. Each frame goes to the ``Mailbox``: a
live frame replaces the one waiting (the newest wins; a replaced frame is counted as dropped), a
lossless source's waits for a free place. When the source fails the runner closes it and reopens
it with exponential backoff and jitter. Nothing a source does can end the daemon. Camera, video,
stream and image sources read with OpenCV, imported when such a source is made (``make_source``),
so a device without one needs no OpenCV.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.config import SourceSection
from edgefleet.agent.opencv import OpenCVMissing, load_cv2

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
SETTLE_S = 0.2  # a file modified more recently than this may still be being written


class SourceError(Exception):
    """The source failed or went away; the runner reopens it after a backoff."""


class SourceEnded(Exception):
    """The source has nothing more to give (a video file without loop)."""


@dataclass
class Frame:
    data: np.ndarray  # BGR (H, W, 3) or gray (H, W), uint8
    seq: int
    ts: float
    origin: str  # file name, URI or "synthetic"
    ahead: object = None  # what the source thread prepared for the model serving then (agent.daemon.loop.Ahead)


class Mailbox:
    """Frames between the one source thread and the one inference thread.

    A live source's frame replaces whatever waits (the newest wins; each replaced frame is counted as dropped).
    A lossless source's put waits for one of ``lossless_depth`` places, so it reads a frame or two ahead and
    the inference thread does not wait on the source thread's wake-up. Two ``SimpleQueue`` (the frames, the
    free places) and no lock of its own: their puts and gets run in C, so a frame crosses in about a
    microsecond and neither thread ever waits on a lock the other holds while it waits for the GIL (a
    ``threading.Condition`` here cost ~50 µs of a ~1 ms inference).
    """

    def __init__(self, lossless_depth: int = 2) -> None:
        self._frames: queue.SimpleQueue[tuple[Frame, bool]] = queue.SimpleQueue()  # (frame, holds a place)
        self._places: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(lossless_depth):
            self._places.put(None)
        self.dropped = 0  # counted by the source thread
        self.delivered = 0  # counted by the inference thread

    def put(self, frame: Frame, *, wait: threading.Event | None = None) -> None:
        """Hand ``frame`` over. Without ``wait`` it replaces the frames waiting (counted as dropped); with
        ``wait`` it blocks until a place is free, or until ``wait`` is set (then the frame is not put)."""
        if wait is not None:
            while True:
                try:
                    self._places.get(timeout=0.1)
                    break
                except queue.Empty:
                    if wait.is_set():
                        return
            if wait.is_set():
                self._places.put(None)
                return
            self._frames.put((frame, True))
            return
        while True:  # take back what still waits; the inference thread may take it first, which is as good
            try:
                _replaced, held = self._frames.get_nowait()
            except queue.Empty:
                break
            self.dropped += 1
            if held:
                self._places.put(None)
        self._frames.put((frame, False))

    def get(self, timeout: float) -> Frame | None:
        try:
            frame, held = self._frames.get(timeout=timeout)
        except queue.Empty:
            return None
        if held:
            self._places.put(None)
        self.delivered += 1
        return frame


class Source:
    kind = "none"
    lossless = False  # True: every frame is processed (the runner waits for a free slot)
    paced = True  # False: the device paces itself (camera, stream): read continuously

    def open(self) -> None: ...

    def read(self) -> tuple[np.ndarray, str] | None:
        """The next frame and its origin; None when nothing is ready yet."""
        raise NotImplementedError

    def close(self) -> None: ...


class CaptureSource(Source):
    """A camera (index or /dev/videoN), a video file or a stream URL, read with OpenCV."""

    def __init__(self, kind: str, uri: str, loop: bool = True, timeout_ms: int = 5000) -> None:
        self.kind = kind
        self.uri = uri
        self.loop = loop
        self.timeout_ms = timeout_ms
        self.paced = kind == "video"
        self._cv2 = load_cv2(f"a {kind} source")
        self._cap: Any = None  # cv2.VideoCapture

    def open(self) -> None:
        cv2 = self._cv2
        if self.kind == "video" and not os.path.exists(self.uri):
            raise SourceError(f"video file {self.uri} does not exist")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
        if self.kind == "camera" and self.uri.isdigit():
            cap = cv2.VideoCapture(int(self.uri), cv2.CAP_ANY, params)
        else:
            cap = cv2.VideoCapture(self.uri, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.kind} {self.uri}")
        self._cap = cap

    def read(self) -> tuple[np.ndarray, str] | None:
        if self._cap is None:
            raise SourceError("not open")
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return frame, self.uri
        if self.kind != "video":
            raise SourceError(f"{self.kind} {self.uri} stopped delivering frames")
        if not self.loop:
            raise SourceEnded(self.uri)
        self.close()  # at the end of the file: reopen it, so a replaced or removed file is noticed
        self.open()
        ok, frame = self._cap.read() if self._cap is not None else (False, None)
        if not ok or frame is None:
            raise SourceError(f"video file {self.uri} has no readable frames")
        return frame, self.uri

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderSource(Source):
    """Images in a folder, each processed once, oldest first; new files are picked up as they arrive.

    What was processed is remembered in ``seen_file`` (one name per line) so a restart does not
    process the folder again; names of files that left the folder are forgotten.
    """

    kind = "images"
    lossless = True

    def __init__(self, folder: str, seen_file: Path | None = None, poll_s: float = 0.2) -> None:
        self.folder = Path(folder)
        self.seen_file = seen_file
        self.poll_s = poll_s
        self._seen: set[str] = set()
        self._pending: list[str] = []
        self._last_scan = 0.0
        self._cv2 = load_cv2("an images source")
        if seen_file is not None and seen_file.exists():
            self._seen = {line for line in seen_file.read_text().splitlines() if line}

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder {self.folder} does not exist")

    def _scan(self) -> None:
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            raise SourceError(f"cannot list {self.folder}: {exc.strerror or exc}") from exc
        now = time.time()
        present, fresh = set(), []
        for entry in entries:
            if entry.name.startswith(".") or Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES \
                    or not entry.is_file():
                continue
            present.add(entry.name)
            if entry.name in self._seen or entry.name in self._pending:
                continue
            mtime = entry.stat().st_mtime
            if now - mtime >= SETTLE_S:
                fresh.append((mtime, entry.name))
        self._pending.extend(name for _m, name in sorted(fresh))
        stale = self._seen - present
        if stale:
            self._seen -= stale
            self._rewrite_seen()

    def _rewrite_seen(self) -> None:
        if self.seen_file is None:
            return
        tmp = self.seen_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{name}\n" for name in sorted(self._seen)))
        os.replace(tmp, self.seen_file)

    def _remember(self, name: str) -> None:
        self._seen.add(name)
        if self.seen_file is not None:
            with self.seen_file.open("a") as handle:
                handle.write(f"{name}\n")

    def read(self) -> tuple[np.ndarray, str] | None:
        if not self._pending and time.monotonic() - self._last_scan >= self.poll_s:
            self._last_scan = time.monotonic()
            if not self.folder.is_dir():
                raise SourceError(f"image folder {self.folder} went away")
            self._scan()
        while self._pending:
            name = self._pending.pop(0)
            self._remember(name)
            image = self._cv2.imread(str(self.folder / name), self._cv2.IMREAD_COLOR)
            if image is None:
                log.warning("skipping %s: not a readable image", self.folder / name)
                continue
            return image, name
        return None


class SyntheticSource(Source):
    """Generated frames (a few precomputed noise images, cycled) for benchmarks and tests."""

    kind = "synthetic"
    lossless = True  # a source that always has a fresh frame ready: a frame or two ahead of inference

    def __init__(self, width: int = 640, height: int = 480, count: int = 4, seed: int = 0, gain: float = 1.0) -> None:
        load_cv2("a synthetic source (its frames are pre-processed)")
        self._frames = synthetic_frames(width, height, count, seed, gain)
        self._index = 0

    def read(self) -> tuple[np.ndarray, str] | None:
        self._index = (self._index + 1) % len(self._frames)
        return self._frames[self._index], "synthetic"


def synthetic_frames(width: int = 640, height: int = 480, count: int = 4, seed: int = 0,
                     gain: float = 1.0) -> list[np.ndarray]:
    """The synthetic source's frames (BGR uint8 noise); ``gain`` scales the pixel values (< 1: darker)."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
    if gain != 1.0:
        frames = [np.clip(np.rint(f * gain), 0, 255).astype(np.uint8) for f in frames]
    return frames


def parse_size(uri: str | None) -> tuple[int, int]:
    """``WxH`` for the synthetic source (default 640x480)."""
    if not uri:
        return 640, 480
    width, sep, height = uri.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"synthetic source uri must be WIDTHxHEIGHT, got {uri!r}")
    return int(width), int(height)


def make_source(section: SourceSection, state_dir: Path | None = None) -> Source | None:
    """The source a config section describes; None for kind ``none``. Raises ValueError when incomplete
    or when the source needs OpenCV and it is missing."""
    try:
        return _make_source(section, state_dir)
    except OpenCVMissing as exc:
        raise ValueError(f"source.kind '{section.kind}': {exc}") from exc


def _make_source(section: SourceSection, state_dir: Path | None) -> Source | None:
    kind = section.kind
    if kind == "none":
        return None
    if kind == "synthetic":
        width, height = parse_size(section.uri)
        return SyntheticSource(width, height, gain=section.gain)
    if not section.uri:
        raise ValueError(f"source.uri is required for source.kind '{kind}'")
    if kind == "images":
        seen = None
        if state_dir is not None and state_dir.is_dir() and os.access(state_dir, os.W_OK):
            seen = state_dir / "images-seen.txt"
        return ImageFolderSource(section.uri, seen_file=seen)
    uri = section.uri
    if kind == "camera" and uri.startswith("/dev/video") and uri[len("/dev/video"):].isdigit():
        uri = uri[len("/dev/video"):]  # the index works with every OpenCV backend
    return CaptureSource(kind, uri, loop=section.loop)


class Backoff:
    """Exponential backoff with full jitter, reset after the first good frame."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0) -> None:
        self.base_s, self.cap_s, self.attempt = base_s, max(cap_s, base_s), 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempt, 16))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class SourceRunner:
    """Reads a source in a thread into a mailbox, reopening it with backoff when it fails."""

    def __init__(self, source: Source, mailbox: Mailbox, fps: float, reconnect_max_s: float = 30.0,
                 prepare: Callable[[np.ndarray], object] | None = None) -> None:
        """``prepare``: called on this thread with each frame's pixels; what it returns rides along as
        ``Frame.ahead`` (pre-processing here overlaps the inference of the frame before)."""
        self.source = source
        self.mailbox = mailbox
        self.prepare = prepare
        self.interval = 1.0 / fps
        self.backoff = Backoff(cap_s=reconnect_max_s)
        self.state = "starting"  # starting | running | reconnecting | ended | stopped
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source-{source.kind}", daemon=True)
        self._seq = 0

    def start(self) -> SourceRunner:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive() or self.state == "ended"

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.state = "stopped"

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            try:
                self.source.open()
                self._pump()
                if self._stop.is_set():
                    break
            except SourceEnded:
                log.info("source %s ended", self.source.kind)
                self.state = "ended"
                break
            except Exception as exc:  # any failure of a source is survivable
                self.failures += 1
                self.last_error = str(exc) or type(exc).__name__
                delay = self.backoff.next_delay()
                log.warning("source %s failed (%s); reopening in %.1fs", self.source.kind, self.last_error, delay)
                self.state = "reconnecting"
            finally:
                try:
                    self.source.close()
                except Exception:  # closing a broken device must not stop the retries
                    log.debug("closing source failed", exc_info=True)
            if self.state == "reconnecting":
                self._stop.wait(delay)

    def _pump(self) -> None:
        next_at = time.monotonic()
        wait = self._stop if self.source.lossless else None
        while not self._stop.is_set():
            if self.source.paced:
                now = time.monotonic()
                if now < next_at:
                    self._stop.wait(next_at - now)
                    continue
                next_at = max(next_at + self.interval, now - self.interval)
            item = self.source.read()
            if item is None:
                self._stop.wait(min(self.interval, 0.1))
                continue
            data, origin = item
            if self.state != "running":
                self.state = "running"
                self.backoff.reset()
            if not self.source.paced:  # device-paced: keep reading, pass on at most fps frames
                now = time.monotonic()
                if now < next_at - self.interval / 2:
                    continue  # early by more than half a slot: a camera faster than fps
                # On a schedule, so a camera at exactly fps keeps every frame whatever its jitter; after a
                # stall the schedule restarts from now instead of letting a burst through to catch up.
                next_at = max(next_at + self.interval, now + self.interval / 2)
            self._seq += 1
            ahead = self.prepare(data) if self.prepare is not None else None
            self.mailbox.put(Frame(data, self._seq, time.time(), origin, ahead), wait=wait)
