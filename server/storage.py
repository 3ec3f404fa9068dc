"""Content-addressed artifact storage: files named by their sha256.

``ArtifactStore`` is the interface; ``LocalStore`` keeps files under a directory
(``ab/abcdef...``), ``S3Store`` keeps them in an S3-compatible bucket (untested here:
no S3 endpoint in the test environment). Writes go to a temporary file first and are
moved into place only once complete and hashed, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from agent.errors import ConfigError, EdgefleetError
from server.config import StorageSection

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


class TooLarge(EdgefleetError):
    """An upload exceeded the configured size limit."""


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def copy_limited(source: IO[bytes], target: IO[bytes], limit: int | None) -> tuple[str, int]:
    """Copy a stream, hashing it; raise TooLarge past ``limit`` bytes."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if limit is not None and size > limit:
            raise TooLarge(f"upload is larger than the limit of {limit} bytes")
        digest.update(chunk)
        target.write(chunk)
    return digest.hexdigest(), size


class ArtifactStore(Protocol):
    def put_file(self, path: Path) -> tuple[str, int]:
        """Move (or copy) a complete local file into the store; return (sha256, size)."""
        ...

    def put_stream(self, stream: IO[bytes], *, limit: int | None = None) -> tuple[str, int]: ...

    def open(self, sha256: str) -> IO[bytes]: ...

    def size(self, sha256: str) -> int: ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None:
        """Remove a stored file (garbage collection); a missing one is not an error."""
        ...

    def path(self, sha256: str) -> Path | None:
        """A local path for the artifact when the backend has one (to stream it with sendfile)."""
        ...

    def scratch_dir(self) -> Path:
        """A local directory for temporary files on the same file system as the store."""
        ...


def _check(sha256: str) -> str:
    if not SHA256_RE.match(sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    return sha256


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def _final(self, sha256: str) -> Path:
        _check(sha256)
        return self.root / sha256[:2] / sha256

    def scratch_dir(self) -> Path:
        return self.root / "tmp"

    def put_file(self, path: Path) -> tuple[str, int]:
        sha256, size = hash_file(path)
        final = self._final(sha256)
        if final.exists():
            path.unlink(missing_ok=True)
            return sha256, size
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.scratch_dir() / f"in-{sha256}-{os.getpid()}"
        shutil.move(str(path), tmp)  # same file system: a rename
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        return sha256, size

    def put_stream(self, stream: IO[bytes], *, limit: int | None = None) -> tuple[str, int]:
        fd, name = tempfile.mkstemp(dir=self.scratch_dir(), prefix="up-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                copy_limited(stream, handle, limit)
            return self.put_file(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def open(self, sha256: str) -> IO[bytes]:
        return self._final(sha256).open("rb")

    def size(self, sha256: str) -> int:
        return self._final(sha256).stat().st_size

    def exists(self, sha256: str) -> bool:
        return SHA256_RE.match(sha256) is not None and self._final(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self._final(sha256).unlink(missing_ok=True)  # a reader that has it open keeps reading it

    def path(self, sha256: str) -> Path | None:
        return self._final(sha256)


class S3Store:
    """An S3-compatible bucket (AWS, MinIO, Ceph RGW). A thin class: untested in this repository."""

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 scratch: Path = Path(tempfile.gettempdir()) / "edgefleet-s3") -> None:
        try:
            import boto3
        except ImportError as exc:
            raise ConfigError("storage.kind: s3 needs boto3: pip install 'edgefleet[s3]'") from exc
        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url)
        self.bucket = bucket
        self.prefix = prefix
        self._scratch = scratch
        self._scratch.mkdir(parents=True, exist_ok=True)

    def _key(self, sha256: str) -> str:
        return f"{self.prefix}{_check(sha256)}"

    def scratch_dir(self) -> Path:
        return self._scratch

    def put_file(self, path: Path) -> tuple[str, int]:
        sha256, size = hash_file(path)
        if not self.exists(sha256):
            self.client.upload_file(str(path), self.bucket, self._key(sha256))
        path.unlink(missing_ok=True)
        return sha256, size

    def put_stream(self, stream: IO[bytes], *, limit: int | None = None) -> tuple[str, int]:
        fd, name = tempfile.mkstemp(dir=self._scratch, prefix="up-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                copy_limited(stream, handle, limit)
            return self.put_file(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def open(self, sha256: str) -> IO[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(sha256))["Body"]
        return body  # type: ignore[no-any-return]

    def size(self, sha256: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))["ContentLength"])

    def exists(self, sha256: str) -> bool:
        if not SHA256_RE.match(sha256):
            return False
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))
        except Exception:  # botocore ClientError 404
            return False
        return True

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))

    def path(self, sha256: str) -> Path | None:
        return None


def iter_range(handle: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    handle.seek(start)
    left = length
    while left > 0:
        chunk = handle.read(min(CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
        yield chunk


def make_store(section: StorageSection) -> ArtifactStore:
    if section.kind == "local":
        return LocalStore(section.path)
    if section.kind == "s3":
        if not section.bucket:
            raise ConfigError("storage.kind: s3 needs storage.bucket")
        return S3Store(section.bucket, prefix=section.prefix, endpoint_url=section.endpoint_url)
    raise ConfigError(f"storage.kind: {section.kind!r} is not one of local, s3")
