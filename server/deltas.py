"""bsdiff4 patches between two stored artifacts, made once and kept in the store."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import bsdiff4

from server.crud import NotFound
from server.crud import deltas as crud
from server.db import Database
from server.storage import ArtifactStore

_lock = threading.Lock()


def ensure_delta(db: Database, store: ArtifactStore, *, from_sha256: str, to_sha256: str) -> tuple[str, int]:
    """(patch sha256, size) for from→to, making and storing the patch on first request."""
    with db.session() as session:
        row = crud.get_delta(session, from_sha256=from_sha256, to_sha256=to_sha256)
        if row is not None and store.exists(row.sha256):
            return row.sha256, row.size
    for sha in (from_sha256, to_sha256):
        if not store.exists(sha):
            raise NotFound(f"artifact {sha} is not stored")
    with _lock:  # one bsdiff at a time: it holds both files in memory
        with db.session() as session:
            row = crud.get_delta(session, from_sha256=from_sha256, to_sha256=to_sha256)
            if row is not None and store.exists(row.sha256):
                return row.sha256, row.size
        scratch = store.scratch_dir()
        temporary: list[Path] = []
        try:
            local: dict[str, Path] = {}
            for sha in (from_sha256, to_sha256):
                path = store.path(sha)
                if path is None:  # a remote store: copy it down first
                    fd, name = tempfile.mkstemp(dir=scratch, prefix="src-")
                    with os.fdopen(fd, "wb") as out, store.open(sha) as src:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                    path = Path(name)
                    temporary.append(path)
                local[sha] = path
            fd, patch_name = tempfile.mkstemp(dir=scratch, prefix="delta-")
            os.close(fd)
            patch = Path(patch_name)
            temporary.append(patch)
            bsdiff4.file_diff(str(local[from_sha256]), str(local[to_sha256]), str(patch))
            sha256, size = store.put_file(patch)
        finally:
            for path in temporary:
                path.unlink(missing_ok=True)
        with db.session() as session:
            crud.record_delta(session, from_sha256=from_sha256, to_sha256=to_sha256, sha256=sha256, size=size)
        return sha256, size
