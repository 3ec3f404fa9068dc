"""Artifact sizes: raw, zstd and gzip. Downloads are what devices pay for, so compressed size counts."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any


def _zstd(data: bytes) -> int | None:
    try:
        import zstandard
    except ImportError:  # the server extra installs it; without it gzip alone is reported
        return None
    return len(zstandard.ZstdCompressor(level=19).compress(data))


def sizes(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"raw_bytes": len(data), "zstd_bytes": _zstd(data), "gzip_bytes": len(gzip.compress(data, 9, mtime=0))}


def compressed(s: dict[str, Any]) -> int:
    """The compressed size used for decisions: zstd when available, else gzip."""
    value = s.get("zstd_bytes") or s["gzip_bytes"]
    return int(value)
