"""Content-addressed artifact storage: files named by their sha256.

``ArtifactStore`` is the interface; ``LocalStore`` keeps files under a directory (``ab/abcdef...``),
``S3Store`` keeps them in an S3-compatible bucket (AWS, MinIO, Ceph RGW, SeaweedFS: the tests run it
against a real SeaweedFS, tests/support/s3.py). Writes go to a temporary file first and are moved into
place only once complete and hashed, so a reader never sees half a file.

Reads: ``read_range`` streams a byte range (a seek on a local file, a ranged GET on S3: a botocore
body cannot seek); ``open`` gives a seekable file (S3: a local copy) for code that needs one, such as
``np.load`` of an ``.npz``.
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

from edgefleet.agent.errors import ConfigError, EdgefleetError
from edgefleet.server.config import StorageSection

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

    def open(self, sha256: str) -> IO[bytes]:
        """A seekable file with the artifact's bytes (FileNotFoundError when it is not stored)."""
        ...

    def read_range(self, sha256: str, start: int, length: int) -> Iterator[bytes]:
        """``length`` bytes from ``start``, in chunks."""
        ...

    def size(self, sha256: str) -> int:
        """The artifact's size (FileNotFoundError when it is not stored)."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None:
        """Remove a stored file (garbage collection); a missing one is not an error."""
        ...

    def list(self) -> Iterator[tuple[str, float, int]]:
        """Every stored artifact: (sha256, UNIX time it was stored, size)."""
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
            os.utime(final)  # stored again: young again for the garbage collector's grace period
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

    def read_range(self, sha256: str, start: int, length: int) -> Iterator[bytes]:
        with self.open(sha256) as handle:
            handle.seek(start)
            left = length
            while left > 0 and (chunk := handle.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk

    def size(self, sha256: str) -> int:
        return self._final(sha256).stat().st_size

    def exists(self, sha256: str) -> bool:
        return SHA256_RE.match(sha256) is not None and self._final(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self._final(sha256).unlink(missing_ok=True)  # a reader that has it open keeps reading it

    def list(self) -> Iterator[tuple[str, float, int]]:
        for shard in sorted(self.root.iterdir()):
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            for entry in shard.iterdir():
                if SHA256_RE.match(entry.name):
                    info = entry.stat()
                    yield entry.name, info.st_mtime, info.st_size

    def path(self, sha256: str) -> Path | None:
        return self._final(sha256)


class S3Store:
    """An S3-compatible bucket. Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an instance role)."""

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 scratch: Path = Path(tempfile.gettempdir()) / "edgefleet-s3", connections: int = 64) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise ConfigError("storage.kind: s3 needs boto3: pip install 'edgefleet[s3]'") from exc
        # one pooled connection per serving thread, or downloads wait for each other; path-style addressing
        # works with every S3-compatible server (virtual hosts need DNS per bucket)
        config = Config(max_pool_connections=connections, retries={"max_attempts": 5, "mode": "standard"},
                        connect_timeout=5, read_timeout=60, s3={"addressing_style": "path"})
        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
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
        key = self._key(sha256)
        if not self.exists(sha256):
            self.client.upload_file(str(path), self.bucket, key)
        else:  # stored again: a copy onto itself renews LastModified, young again for the garbage collector
            self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                                    MetadataDirective="REPLACE")
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
        handle = tempfile.TemporaryFile(dir=self._scratch)  # noqa: SIM115 (the caller closes it)
        try:
            self.client.download_fileobj(self.bucket, self._key(sha256), handle)
        except Exception as exc:
            handle.close()
            if _is_missing(exc):
                raise FileNotFoundError(f"artifact {sha256} is not stored") from exc
            raise
        handle.seek(0)
        return handle

    def read_range(self, sha256: str, start: int, length: int) -> Iterator[bytes]:
        if length <= 0:
            return
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(sha256),
                                      Range=f"bytes={start}-{start + length - 1}")["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def size(self, sha256: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))["ContentLength"])
        except Exception as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"artifact {sha256} is not stored") from exc
            raise

    def exists(self, sha256: str) -> bool:
        """False only for an object the store says is missing: an unreachable store raises (a device must
        not be told an artifact is gone because S3 had a bad second)."""
        if not SHA256_RE.match(sha256):
            return False
        try:
            self.size(sha256)
        except FileNotFoundError:
            return False
        return True

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))

    def list(self) -> Iterator[tuple[str, float, int]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix):]
                if SHA256_RE.match(name):
                    yield name, item["LastModified"].timestamp(), int(item["Size"])

    def path(self, sha256: str) -> Path | None:
        return None


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def make_store(section: StorageSection) -> ArtifactStore:
    if section.kind == "local":
        return LocalStore(section.path)
    if section.kind == "s3":
        if not section.bucket:
            raise ConfigError("storage.kind: s3 needs storage.bucket")
        return S3Store(section.bucket, prefix=section.prefix, endpoint_url=section.endpoint_url, region=section.region,
                       scratch=section.path / "tmp")
    raise ConfigError(f"storage.kind: {section.kind!r} is not one of local, s3")
