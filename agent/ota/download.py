"""Resumable downloads into a partial file, and bsdiff4 deltas.

The partial file (``update/partial/<sha256>.part``) survives restarts; a later attempt asks for
the remainder with ``Range: bytes=N-`` and ``If-Range: <etag>``. A server that answers 200
(the entity changed, or no range support) starts the file over. Every byte is counted so the
caller (and the tests) can see that only the remainder crossed the wire.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.errors import EdgefleetError, TransportError, UpdateRejected
from edgefleet.agent.ota.fsutil import free_mb, fsync_dir
from edgefleet.agent.ota.http import HttpError, Response, Session


class DiskFull(EdgefleetError):
    """Not enough free space for the download: a clean, fatal failure of this update."""


@dataclass
class Fetched:
    path: Path
    transferred: int  # bytes received in this attempt
    resumed_from: int  # bytes already on disk when it started


class Downloader:
    def __init__(self, session: Session, *, headers: dict[str, str] | None = None,
                 connect_timeout_s: float = 10.0, stall_timeout_s: float = 30.0,
                 attempt_timeout_s: float = 600.0, chunk: int = 64 * 1024) -> None:
        self.session = session
        self.headers = headers or {}
        self.connect_timeout_s = connect_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.chunk = chunk
        self.total_transferred = 0

    @staticmethod
    def ensure_space(directory: Path, need_bytes: int, min_free_mb: float) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        free = free_mb(directory)
        need_mb = need_bytes / (1024 * 1024)
        if free - need_mb < min_free_mb:
            raise DiskFull(f"{free:.1f} MB free in {directory}, need {need_mb:.1f} MB plus a {min_free_mb:.0f} MB "
                           "reserve")

    def fetch(self, url: str, part: Path, size: int) -> Fetched:
        """Bring ``part`` to ``size`` bytes from ``url``, resuming what is there; TransportError to retry later."""
        part.parent.mkdir(parents=True, exist_ok=True)
        etag_file = part.with_suffix(".etag")
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return Fetched(part, 0, have)
        headers = dict(self.headers)
        etag = etag_file.read_text().strip() if etag_file.exists() and have else None
        if have and etag:
            headers["Range"] = f"bytes={have}-"
            headers["If-Range"] = etag
        try:
            response = self.session.get(url, headers=headers, stream=True,
                                        timeout=(self.connect_timeout_s, self.stall_timeout_s))
        except HttpError as exc:
            raise TransportError(f"download of {url} failed: {exc}") from exc
        with response:
            if response.status_code == 206:
                start = _range_start(response.headers.get("Content-Range", ""))
                if start != have:
                    raise TransportError(f"server resumed at byte {start}, expected {have}")
                mode = "ab"
            elif response.status_code == 200:
                have, mode = 0, "wb"
            elif response.status_code in (404, 410):
                raise UpdateRejected(f"artifact {url} is gone ({response.status_code})")
            elif response.status_code == 416:  # our partial file is at or past the server's end
                part.unlink(missing_ok=True)
                etag_file.unlink(missing_ok=True)
                total = _range_total(response.headers.get("Content-Range", ""))
                if total is not None and total < size:
                    raise UpdateRejected(f"the server has {total} bytes of {url}, the manifest says {size}")
                raise TransportError(f"download of {url}: HTTP 416 for bytes={have}-; starting over")
            else:
                raise TransportError(f"download of {url}: HTTP {response.status_code}")
            new_etag = response.headers.get("ETag")
            if new_etag:
                etag_file.write_text(new_etag)
            transferred = self._copy(response, part, mode, have, size)
        return Fetched(part, transferred, have)

    def _copy(self, response: Response, part: Path, mode: str, have: int, size: int) -> int:
        deadline = time.monotonic() + self.attempt_timeout_s
        transferred = 0
        try:
            with open(part, mode) as out:
                try:
                    for block in response.iter_content(self.chunk):
                        if have + transferred + len(block) > size:
                            raise UpdateRejected(f"server sent more than the manifest's {size} bytes")
                        out.write(block)
                        transferred += len(block)
                        self.total_transferred += len(block)
                        if time.monotonic() > deadline:
                            raise TransportError(f"download too slow: {have + transferred}/{size} bytes after "
                                                 f"{self.attempt_timeout_s:.0f}s; resuming later")
                except HttpError as exc:  # the link; a full disk (ENOSPC) is a DiskFull below
                    raise TransportError(f"download interrupted at {have + transferred}/{size} bytes: {exc}") \
                        from exc
                finally:
                    out.flush()
                    os.fsync(out.fileno())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull(f"disk full while writing {part}") from exc
            raise
        fsync_dir(part.parent)
        if have + transferred != size:
            raise TransportError(f"download stopped at {have + transferred}/{size} bytes; resuming later")
        return transferred


def _range_start(content_range: str) -> int:
    # "bytes START-END/TOTAL"
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _range_total(content_range: str) -> int | None:
    # "bytes */TOTAL" (416) or "bytes START-END/TOTAL"
    try:
        return int(content_range.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def apply_delta(old: Path, patch: Path, out: Path) -> None:
    """Write ``bsdiff4.patch(old, patch)`` to ``out``; UpdateRejected when the patch does not apply."""
    import bsdiff4

    try:
        data = bsdiff4.patch(old.read_bytes(), patch.read_bytes())
    except Exception as exc:  # bsdiff4 raises ValueError and others on a corrupt patch
        raise UpdateRejected(f"delta does not apply: {exc}") from exc
    with open(out, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(out.parent)
