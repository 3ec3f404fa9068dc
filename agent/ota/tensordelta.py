"""Tensor deltas: rebuild a model's exact bytes from the installed model, tensor by tensor.

The server (``server/tensordelta.py``) parses both models, matches their tensors by name, shape and
dtype and writes one file, read here front to back::

    b"EFTD"  u16 format version  u16 0  u32 header length      (little-endian)
    header   zstd-compressed JSON: base and target files, the skeleton, the segments
    patch    bsdiff4 patch from the base's skeleton to the target's (everything that is not tensor data)
    payload  one zstd frame: the data of every segment that carries any, in segment order

Each target file is the concatenation of its segments:

    ["s", m, n]                         the next n bytes of the rebuilt target skeleton
    ["c", m, n, bm, boff]               n bytes copied from base file bm at boff (an unchanged tensor)
    ["x", m, n, bm, boff, elem]         base bytes XOR n payload bytes, byte-plane shuffled per chunk
    ["d", m, n, bm, boff, elem]         base + n payload bytes: zigzag differences of the elem-byte bit
                                        patterns (integers, wrapping), byte-plane shuffled per chunk
    ["l", m, n, elem]                   n literal payload bytes, byte-plane shuffled per chunk (a new tensor)
    ["q", m, n, bm, boff, scale]        float32: base + scale * n/4 int8 payload bytes (a ``delta-q8`` variant)

Memory stays bounded by the skeleton (capped) and a few chunks, whatever the model's size: the base is
read by offset, the delta and the output are streamed. Every figure in the header is checked before
use; a version this agent does not read is refused with one line (the caller fetches the full artifact).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edgefleet.agent.errors import UpdateRejected
from edgefleet.agent.ota.fsutil import fsync_dir

MAGIC = b"EFTD"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<4sHHI")
MAX_HEADER_BYTES = 16 << 20  # compressed and decompressed
MAX_SKELETON_BYTES = 64 << 20  # each side; the server makes no tensor delta past it
MAX_CHUNK_BYTES = 16 << 20
MAX_WINDOW_BYTES = 8 << 20  # the zstd window a payload may ask the decoder to hold (the server uses 4 MiB)
MAX_SEGMENTS = 1 << 20
MAX_FILES = 64
ELEM_SIZES = (1, 2, 4, 8)


class UnsupportedDelta(UpdateRejected):
    """A delta in a format version this agent does not read."""


def shuffle(data: bytes | np.ndarray, elem: int) -> bytes:
    """Byte planes: all first bytes of the elements, then all second bytes, ... (``elem`` bytes each)."""
    raw = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray | memoryview) else data.view(np.uint8)
    if elem == 1:
        return raw.tobytes()
    return raw.reshape(-1, elem).T.tobytes()


def unshuffle(data: bytes, elem: int) -> np.ndarray:
    raw = np.frombuffer(data, np.uint8)
    if elem == 1:
        return raw
    return np.ascontiguousarray(raw.reshape(elem, -1).T).reshape(-1)


def xor_apply(old: bytes, mask: np.ndarray) -> bytes:
    return np.bitwise_xor(np.frombuffer(old, np.uint8), mask).tobytes()


def diff_encode(old: bytes, new: bytes, elem: int) -> bytes:
    """Zigzag-coded ``new - old`` of each element's bit pattern as an ``elem``-byte integer, shuffled."""
    unsigned, signed = np.dtype(f"<u{elem}"), np.dtype(f"<i{elem}")
    step = (np.frombuffer(new, unsigned) - np.frombuffer(old, unsigned)).view(signed)
    zigzag = (step << 1) ^ (step >> (8 * elem - 1))
    return shuffle(zigzag.view(unsigned), elem)


def diff_apply(old: bytes, payload: bytes, elem: int) -> bytes:
    unsigned, signed = np.dtype(f"<u{elem}"), np.dtype(f"<i{elem}")
    zigzag = unshuffle(payload, elem).view(unsigned)
    step = (zigzag >> 1).view(signed) ^ -(zigzag & 1).view(signed)
    return (np.frombuffer(old, unsigned) + step.view(unsigned)).tobytes()


def q8_apply(base: np.ndarray, scale: np.float32, q: np.ndarray) -> np.ndarray:
    """float32 ``base + scale * q``, in that order and precision on every machine (IEEE-754 float32 ops)."""
    step = np.multiply(q.astype(np.float32), np.float32(scale), dtype=np.float32)
    return np.add(base, step, dtype=np.float32)


@dataclass(frozen=True)
class Header:
    version: int
    chunk: int
    bases: list[dict[str, Any]]
    targets: list[dict[str, Any]]
    skeleton: dict[str, Any]
    segments: list[list[Any]]
    payload_size: int  # of the zstd frame after the skeleton patch
    payload_start: int  # file offset of the skeleton patch


def _fail(reason: str) -> UpdateRejected:
    return UpdateRejected(f"tensor delta refused: {reason}")


def _int(value: Any, name: str, low: int = 0, high: int = 1 << 62) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(f"{name} is {value!r}, not an integer in [{low}, {high}]")
    return value


def read_header(handle: BinaryIO, file_size: int) -> Header:
    """Parse and bound the preamble and header; UnsupportedDelta for another format version."""
    import zstandard

    raw = handle.read(PREAMBLE.size)
    if len(raw) < PREAMBLE.size:
        raise _fail("shorter than its preamble")
    magic, version, _reserved, length = PREAMBLE.unpack(raw)
    if magic != MAGIC:
        raise _fail(f"not a tensor delta (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise UnsupportedDelta(f"tensor delta format version {version} is not supported (this agent reads "
                               f"version {FORMAT_VERSION})")
    if length > MAX_HEADER_BYTES or PREAMBLE.size + length > file_size:
        raise _fail(f"header of {length} bytes does not fit")
    try:
        text = zstandard.ZstdDecompressor().decompress(handle.read(length), max_output_size=MAX_HEADER_BYTES)
        doc = json.loads(text)
    except (zstandard.ZstdError, ValueError) as exc:
        raise _fail(f"header does not decode: {exc}") from exc
    if not isinstance(doc, dict):
        raise _fail("header is not an object")
    parts: dict[str, Any] = {k: doc.get(k) for k in ("bases", "targets", "skeleton", "segments")}
    header = Header(FORMAT_VERSION, _int(doc.get("chunk"), "chunk", 8, MAX_CHUNK_BYTES),
                    payload_size=_int(doc.get("payload_size"), "payload_size", 0, file_size),
                    payload_start=PREAMBLE.size + length, **parts)
    _check(header, file_size)
    return header


def _check(header: Header, file_size: int) -> None:
    if header.chunk % 8:
        raise _fail("chunk is not a multiple of 8")
    for name, files in (("bases", header.bases), ("targets", header.targets)):
        if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
            raise _fail(f"{name} is not a list of 1..{MAX_FILES} files")
        for entry in files:
            if not isinstance(entry, dict):
                raise _fail(f"{name} entry is not an object")
            _int(entry.get("size"), f"{name} size")
    for entry in header.targets:
        if not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
            raise _fail("a target has no sha256")
    skel = header.skeleton
    if not isinstance(skel, dict) or not isinstance(skel.get("base"), list) or not isinstance(skel.get("sha256"), str):
        raise _fail("skeleton is not described")
    base_total = 0
    for span in skel["base"]:
        if not isinstance(span, list) or len(span) != 3:
            raise _fail("a base skeleton span is not [file, offset, length]")
        member = _int(span[0], "skeleton file", 0, len(header.bases) - 1)
        offset, length = _int(span[1], "skeleton offset"), _int(span[2], "skeleton length")
        if offset + length > header.bases[member]["size"]:
            raise _fail("a base skeleton span runs past its file")
        base_total += length
    if base_total > MAX_SKELETON_BYTES:
        raise _fail(f"base skeleton of {base_total} bytes is over {MAX_SKELETON_BYTES}")
    _int(skel.get("target_size"), "skeleton target_size", 0, MAX_SKELETON_BYTES)
    patch = _int(skel.get("patch_size"), "skeleton patch_size", 0, file_size)
    segments = header.segments
    if not isinstance(segments, list) or len(segments) > MAX_SEGMENTS:
        raise _fail(f"segments is not a list of at most {MAX_SEGMENTS}")
    written = [0] * len(header.targets)
    skeleton_used, last = 0, 0
    for seg in segments:
        if not isinstance(seg, list) or len(seg) < 3 or seg[0] not in ("s", "c", "x", "d", "l", "q"):
            raise _fail(f"unknown segment {str(seg)[:60]}")
        member = _int(seg[1], "segment file", last, len(header.targets) - 1)
        last = member
        length = _int(seg[2], "segment length")
        kind = seg[0]
        shape = {"s": 3, "c": 5, "x": 6, "d": 6, "l": 4, "q": 6}[kind]
        if len(seg) != shape:
            raise _fail(f"segment {kind} has {len(seg)} fields, not {shape}")
        if kind in ("c", "x", "d", "q"):
            base = _int(seg[3], "segment base file", 0, len(header.bases) - 1)
            if _int(seg[4], "segment base offset") + length > header.bases[base]["size"]:
                raise _fail("a segment reads past its base file")
        if kind in ("x", "d", "l"):
            elem = seg[3] if kind == "l" else seg[5]
            if elem not in ELEM_SIZES or length % elem:
                raise _fail(f"element size {elem!r} does not divide {length}")
        if kind == "q":
            scale = seg[5]
            if not isinstance(scale, float) or not np.isfinite(scale) or scale <= 0 or length % 4:
                raise _fail("a q8 segment has no valid scale or is not float32")
        if kind == "s":
            skeleton_used += length
        written[member] += length
    if skeleton_used != skel["target_size"]:
        raise _fail("the segments do not use the whole skeleton")
    if header.payload_start + patch + header.payload_size != file_size:
        raise _fail(f"the patch and payload need {patch + header.payload_size} bytes after the header, the file "
                    f"has {file_size - header.payload_start}")
    for member, entry in enumerate(header.targets):
        if written[member] != entry["size"]:
            raise _fail(f"target {member}: segments make {written[member]} bytes, not {entry['size']}")


class _Slice:
    """A reader over the next ``size`` bytes of ``handle`` (the payload frame)."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.handle.read(size)
        self.left -= len(data)
        return data


class _Payload:
    """The decompressed payload stream, taken a piece at a time in segment order."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        import zstandard

        self.source = _Slice(handle, size)
        self.error = zstandard.ZstdError
        self.reader = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).stream_reader(
            self.source, read_across_frames=False, closefd=False)  # type: ignore[arg-type]

    def take(self, size: int) -> bytes:
        piece = bytearray()
        try:
            while len(piece) < size:
                block = self.reader.read(size - len(piece))
                if not block:
                    raise _fail("the payload ended before the last segment")
                piece += block
        except self.error as exc:
            raise _fail(f"the payload does not decompress: {exc}") from exc
        return bytes(piece)

    def finish(self) -> None:
        try:
            extra = self.reader.read(1)
        except self.error as exc:
            raise _fail(f"the payload does not decompress: {exc}") from exc
        if extra or self.source.left:
            raise _fail("the payload holds more than its segments")


def _read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise _fail("the installed model is shorter than the delta expects")
    return data


def _segment(seg: list[Any], payload: _Payload, bases: Sequence[BinaryIO], skeleton: memoryview, chunk: int,
             used: int, out: BinaryIO, digest: Any) -> int:
    """Write one segment's bytes; returns how much of the skeleton it used."""
    kind, _member, length = seg[0], seg[1], seg[2]

    def emit(data: bytes | memoryview) -> None:
        out.write(data)
        digest.update(data)

    if kind == "s":
        emit(skeleton[used:used + length])
        return length
    if kind == "l":
        for start in range(0, length, chunk):
            emit(unshuffle(payload.take(min(chunk, length - start)), seg[3]).tobytes())
        return 0
    base, offset = bases[seg[3]], seg[4]
    step = chunk if kind != "q" else chunk - chunk % 4
    for start in range(0, length, step):
        size = min(step, length - start)
        old = _read_at(base, offset + start, size)
        if kind == "c":
            emit(old)
        elif kind == "x":
            emit(xor_apply(old, unshuffle(payload.take(size), seg[5])))
        elif kind == "d":
            emit(diff_apply(old, payload.take(size), seg[5]))
        else:
            q = np.frombuffer(payload.take(size // 4), np.int8)
            emit(q8_apply(np.frombuffer(old, "<f4"), np.float32(seg[5]), q).astype("<f4").tobytes())
    return 0


def apply_files(bases: list[Path], delta_path: Path, outputs: list[Path]) -> None:
    """Rebuild every target file of ``delta_path`` from ``bases`` into ``outputs`` (same order as the header),
    each fsynced; UpdateRejected (UnsupportedDelta for another format version) when it does not apply."""
    import bsdiff4

    size = delta_path.stat().st_size
    with open(delta_path, "rb") as delta:
        header = read_header(delta, size)
        if len(bases) != len(header.bases) or len(outputs) != len(header.targets):
            raise _fail(f"it rebuilds {len(header.targets)} files from {len(header.bases)}, the caller has "
                        f"{len(bases)} and wants {len(outputs)}")
        for path, entry in zip(bases, header.bases, strict=True):
            if path.stat().st_size != entry["size"]:
                raise _fail(f"the installed {path.name} is {path.stat().st_size} bytes, the delta expects "
                            f"{entry['size']}")
        handles = [open(path, "rb") for path in bases]  # noqa: SIM115 - closed below
        try:
            base_skeleton = b"".join(_read_at(handles[m], off, n) for m, off, n in header.skeleton["base"])
            delta.seek(header.payload_start)
            try:
                skeleton = bsdiff4.patch(base_skeleton, delta.read(header.skeleton["patch_size"]))
            except Exception as exc:  # bsdiff4 raises ValueError and others on a corrupt patch
                raise _fail(f"the skeleton patch does not apply: {exc}") from exc
            del base_skeleton
            if len(skeleton) != header.skeleton["target_size"] or \
                    hashlib.sha256(skeleton).hexdigest() != header.skeleton["sha256"]:
                raise _fail("the rebuilt skeleton does not match its sha256")
            payload = _Payload(delta, header.payload_size)
            _write_targets(header, payload, handles, memoryview(skeleton), outputs)
            payload.finish()
        finally:
            for handle in handles:
                handle.close()


def _write_targets(header: Header, payload: _Payload, bases: Sequence[BinaryIO], skeleton: memoryview,
                   outputs: list[Path]) -> None:
    used = 0
    for member, path in enumerate(outputs):
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            for seg in header.segments:
                if seg[1] == member:
                    used += _segment(seg, payload, bases, skeleton, header.chunk, used, out, digest)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != header.targets[member]["sha256"]:
            raise _fail(f"rebuilt file {member} does not match its sha256")
    fsync_dir(outputs[0].parent)


def apply_tensor_delta(old: Path, patch: Path, out: Path) -> None:
    """The one-file case the OTA client uses: the installed model → ``out``."""
    apply_files([old], patch, [out])
