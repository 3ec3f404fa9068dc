"""Make tensor deltas (the format is agent/ota/tensordelta.py's): only the weights that changed travel.

Tensors of the two models are matched by name, dtype and shape. An unchanged tensor is a reference to
the base's bytes; a changed one is the XOR of its bit patterns with the base's, byte-plane shuffled and
zstd-compressed; a tensor the base lacks travels as literal bytes (shuffled, compressed); everything
that is not tensor data (graph, names, quantization parameters, padding) goes through bsdiff4.

With ``q8=True`` the target is not rebuilt exactly: each changed float32 tensor becomes
``base + scale * q`` with ``q`` = the int8 per-tensor quantization of ``target - base``, and the files
that delta rebuilds (the ``delta-q8`` variant) are written to ``variant_out`` as the delta is made.
Both models are memory-mapped and processed a chunk at a time.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import shutil
import struct
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import bsdiff4
import numpy as np
import zstandard

from edgefleet.agent.ota.tensordelta import (
    FORMAT_VERSION,
    MAGIC,
    MAX_SKELETON_BYTES,
    PREAMBLE,
    diff_encode,
    q8_apply,
    shuffle,
)
from edgefleet.server.tensors import ModelLayout, NotParsable, TensorSpan

CHUNK_BYTES = 1 << 20
ZSTD_LEVEL = 19
WINDOW_LOG = 22  # a 4 MiB window: the device's decoder holds it (agent/ota/tensordelta.py MAX_WINDOW_BYTES)


@dataclass
class DeltaStats:
    """What a delta holds, by kind of segment (bytes are target bytes unless they say payload)."""

    tensors: int = 0
    unchanged: int = 0
    changed: int = 0
    new: int = 0
    quantized: int = 0
    unchanged_bytes: int = 0
    changed_bytes: int = 0  # raw size of the changed (and new) tensors
    tensor_bytes: int = 0
    changed_float32_bytes: int = 0  # bytes of float32 values that differ: what a delta-q8 variant can shrink
    float_elements: int = 0
    changed_float_elements: int = 0
    payload_bytes: int = 0
    skeleton_bytes: int = 0
    skeleton_patch_bytes: int = 0
    header_bytes: int = 0
    size: int = 0
    by_tensor: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "by_tensor"}
        doc["changed_float_fraction"] = round(self.changed_float_elements / self.float_elements, 4) \
            if self.float_elements else 0.0
        doc["changed_float32_share"] = round(self.changed_float32_bytes / self.tensor_bytes, 4) \
            if self.tensor_bytes else 0.0
        return doc


class _Files:
    """The memory-mapped files of one model."""

    def __init__(self, stack: ExitStack, paths: list[Path]) -> None:
        self.maps: list[mmap.mmap | bytes] = []
        for path in paths:
            handle = stack.enter_context(path.open("rb"))
            if path.stat().st_size == 0:
                self.maps.append(b"")
            else:
                self.maps.append(stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)))

    def span(self, t: TensorSpan, start: int = 0, length: int | None = None) -> bytes:
        end = t.length if length is None else start + length
        return bytes(self.maps[t.file][t.offset + start:t.offset + end])


def _gaps(layout: ModelLayout, sizes: list[int]) -> list[tuple[int, int, int]]:
    """[file, offset, length] of the bytes outside every tensor span, in file order."""
    gaps: list[tuple[int, int, int]] = []
    for index, size in enumerate(sizes):
        position = 0
        for t in (t for t in layout.tensors if t.file == index):
            if t.offset > position:
                gaps.append((index, position, t.offset - position))
            position = t.offset + t.length
        if size > position:
            gaps.append((index, position, size - position))
    return gaps


def _q8_scale(pairs: Any) -> float | None:
    """The per-tensor scale max|new - base| / 127 over (base, new) float32 chunks; None where q8 cannot hold
    (non-finite values, no change, a scale that underflows)."""
    peak = 0.0
    for base, new in pairs:
        if not (np.all(np.isfinite(base)) and np.all(np.isfinite(new))):
            return None
        if base.size:
            peak = max(peak, float(np.max(np.abs(new.astype(np.float64) - base.astype(np.float64)))))
    scale = np.float32(peak / 127.0)
    return float(scale) if peak and np.isfinite(scale) and scale > 0 else None


def _q8(base: np.ndarray, new: np.ndarray, scale: float) -> np.ndarray:
    diff = new.astype(np.float64) - base.astype(np.float64)
    return np.clip(np.rint(diff / scale), -127, 127).astype(np.int8)


class _Writer:
    """Segments, their payloads (in a temporary file) and the files they rebuild, as they are made."""

    def __init__(self, payload: BinaryIO, targets: list[BinaryIO | None], level: int) -> None:
        self.payload = payload
        self.targets = targets  # None: the target exists already, only its sha256 is wanted
        self.digests = [hashlib.sha256() for _ in targets]
        self.segments: list[list[Any]] = []
        params = zstandard.ZstdCompressionParameters.from_level(level, window_log=WINDOW_LOG)
        self.stream = zstandard.ZstdCompressor(compression_params=params).stream_writer(payload, closefd=False)
        self.compressor = zstandard.ZstdCompressor(level=level)  # for trials (a context streams one frame at a time)

    def rebuilt(self, member: int, data: bytes) -> None:
        out = self.targets[member]
        if out is not None:
            out.write(data)
        self.digests[member].update(data)

    def data(self, pieces: Any) -> None:
        for piece in pieces:
            self.stream.write(piece)

    def close(self) -> int:
        """End the payload frame; its compressed size."""
        self.stream.close()
        return self.payload.tell()


def build_tensor_delta(base: ModelLayout, target: ModelLayout, out: Path, *, q8: bool = False,
                       variant_out: list[Path] | None = None, level: int = ZSTD_LEVEL,
                       chunk: int = CHUNK_BYTES) -> DeltaStats:
    """Write the delta base → target (or, with ``q8``, base → the delta-q8 variant written to ``variant_out``)."""
    if q8 and (variant_out is None or len(variant_out) != len(target.files)):
        raise ValueError("q8 needs one variant_out path per target file")
    base_sizes = [p.stat().st_size for p in base.files]
    target_sizes = [p.stat().st_size for p in target.files]
    base_gaps, target_gaps = _gaps(base, base_sizes), _gaps(target, target_sizes)
    stats = DeltaStats()
    stats.skeleton_bytes = sum(g[2] for g in target_gaps)
    if stats.skeleton_bytes > MAX_SKELETON_BYTES or sum(g[2] for g in base_gaps) > MAX_SKELETON_BYTES:
        raise NotParsable(f"the skeleton (everything outside tensors) is over {MAX_SKELETON_BYTES} bytes")
    by_key = {(t.key, t.dtype, t.shape, t.length): t for t in base.tensors}
    with ExitStack() as stack:
        old, new = _Files(stack, base.files), _Files(stack, target.files)
        base_skeleton = b"".join(bytes(old.maps[f][o:o + n]) for f, o, n in base_gaps)
        target_skeleton = b"".join(bytes(new.maps[f][o:o + n]) for f, o, n in target_gaps)
        patch = bsdiff4.diff(base_skeleton, target_skeleton)
        del base_skeleton
        payload = stack.enter_context(tempfile.TemporaryFile(dir=out.parent))
        rebuilt: list[BinaryIO | None] = [None] * len(target.files)
        if variant_out is not None and q8:
            rebuilt = [stack.enter_context(p.open("wb")) for p in variant_out]
        writer = _Writer(payload, rebuilt, level)
        skeleton_at = 0
        for member, size in enumerate(target_sizes):
            position = 0
            for t in (t for t in target.tensors if t.file == member):
                if t.offset > position:
                    skeleton_at = _skeleton(writer, member, target_skeleton, skeleton_at, t.offset - position)
                _tensor(writer, member, t, by_key.get((t.key, t.dtype, t.shape, t.length)), old, new, stats,
                        q8=q8, chunk=chunk)
                position = t.offset + t.length
            if size > position:
                skeleton_at = _skeleton(writer, member, target_skeleton, skeleton_at, size - position)
        stats.payload_bytes = writer.close()
        header = {"chunk": chunk, "payload_size": stats.payload_bytes,
                  "bases": [{"name": n, "size": s} for n, s in zip(base.names(), base_sizes, strict=True)],
                  "targets": [{"name": n, "size": s, "sha256": d.hexdigest()} for n, s, d in
                              zip(target.names(), target_sizes, writer.digests, strict=True)],
                  "skeleton": {"base": [list(g) for g in base_gaps], "target_size": len(target_skeleton),
                               "patch_size": len(patch),
                               "sha256": hashlib.sha256(target_skeleton).hexdigest()},
                  "segments": writer.segments}
        packed = zstandard.ZstdCompressor(level=level).compress(json.dumps(header, separators=(",", ":")).encode())
        stats.skeleton_patch_bytes = len(patch)
        stats.header_bytes = PREAMBLE.size + len(packed)
        payload.seek(0)
        with out.open("wb") as handle:
            handle.write(struct.pack("<4sHHI", MAGIC, FORMAT_VERSION, 0, len(packed)))
            handle.write(packed)
            handle.write(patch)
            shutil.copyfileobj(payload, handle, 1 << 20)
    stats.size = out.stat().st_size
    return stats


def _skeleton(writer: _Writer, member: int, skeleton: bytes, at: int, length: int) -> int:
    writer.segments.append(["s", member, length])
    writer.rebuilt(member, skeleton[at:at + length])
    return at + length


def _pieces(files: _Files, t: TensorSpan, chunk: int) -> Any:
    return (files.span(t, s, min(chunk, t.length - s)) for s in range(0, t.length, chunk))


def _arrays(old: _Files, match: TensorSpan, new: _Files, t: TensorSpan, chunk: int) -> Any:
    """(base, target) values of two matched float tensors, a chunk at a time."""
    dtype = np.dtype(t.dtype).newbyteorder("<")
    return ((np.frombuffer(a, dtype), np.frombuffer(b, dtype))
            for a, b in zip(_pieces(old, match, chunk), _pieces(new, t, chunk), strict=True))


def _tensor(writer: _Writer, member: int, t: TensorSpan, match: TensorSpan | None, old: _Files, new: _Files,
            stats: DeltaStats, *, q8: bool, chunk: int) -> None:
    stats.tensors += 1
    stats.tensor_bytes += t.length
    floats = t.dtype in ("float32", "float16", "float64")
    elements = t.length // t.elem
    stats.float_elements += elements if floats else 0
    if match is None:
        stats.new += 1
        stats.changed_bytes += t.length
        stats.changed_float_elements += elements if floats else 0
        writer.data(shuffle(p, t.elem) for p in _pieces(new, t, chunk))
        writer.segments.append(["l", member, t.length, t.elem])
        for piece in _pieces(new, t, chunk):
            writer.rebuilt(member, piece)
        return
    if all(a == b for a, b in zip(_pieces(old, match, chunk), _pieces(new, t, chunk), strict=True)):
        stats.unchanged += 1
        stats.unchanged_bytes += t.length
        writer.segments.append(["c", member, t.length, match.file, match.offset])
        for piece in _pieces(new, t, chunk):
            writer.rebuilt(member, piece)
        return
    stats.changed += 1
    stats.changed_bytes += t.length
    if floats:
        moved = sum(int(np.count_nonzero(a != b)) for a, b in _arrays(old, match, new, t, chunk))
        stats.changed_float_elements += moved
        stats.changed_float32_bytes += 4 * moved if t.dtype == "float32" else 0
    if q8 and t.dtype == "float32":
        scale = _q8_scale(_arrays(old, match, new, t, chunk))
        if scale is not None:
            stats.quantized += 1
            writer.segments.append(["q", member, t.length, match.file, match.offset, scale])
            for base_f, new_f in _arrays(old, match, new, t, chunk):
                q = _q8(base_f, new_f, scale)
                writer.data([q.tobytes()])
                writer.rebuilt(member, q8_apply(base_f, np.float32(scale), q).astype("<f4").tobytes())
            stats.by_tensor.append({"key": t.key, "kind": "q", "bytes": t.length})
            return
    kind = _better_coding(old.span(match, 0, min(chunk, t.length)), new.span(t, 0, min(chunk, t.length)), t.elem,
                          writer.compressor)
    coded = (shuffle(np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)), t.elem) if kind == "x"
             else diff_encode(a, b, t.elem) for a, b in zip(_pieces(old, match, chunk), _pieces(new, t, chunk),
                                                           strict=True))
    writer.data(coded)
    writer.segments.append([kind, member, t.length, match.file, match.offset, t.elem])
    for piece in _pieces(new, t, chunk):
        writer.rebuilt(member, piece)
    stats.by_tensor.append({"key": t.key, "kind": kind, "bytes": t.length})


def _better_coding(old: bytes, new: bytes, elem: int, compressor: zstandard.ZstdCompressor) -> str:
    """"x" (XOR) or "d" (difference), whichever compresses the tensor's first chunk smaller. XOR wins where
    bits change at random; the difference where values move by a few units in the last place (a fine-tune
    in float16, an int8 re-quantization), whose carries XOR turns into runs of flipped bits."""
    xor = shuffle(np.bitwise_xor(np.frombuffer(old, np.uint8), np.frombuffer(new, np.uint8)), elem)
    return "d" if len(compressor.compress(diff_encode(old, new, elem))) < len(compressor.compress(xor)) else "x"
