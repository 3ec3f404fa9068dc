"""The value types and the entry point: a model's files and the spans of its tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.agent.errors import EdgefleetError

MIN_SPAN_BYTES = 64  # smaller tensors stay in the skeleton: a segment of their own costs more than it saves


class NotParsable(EdgefleetError):
    """The file is not a model whose tensors this server can locate (corrupt, or another format)."""


@dataclass(frozen=True)
class TensorSpan:
    key: str  # unique within the model: the tensor's name (made unique with "#n" where it repeats)
    dtype: str  # numpy dtype name; "bytes" where the element type has no fixed width
    shape: tuple[int, ...]
    file: int  # index into ModelLayout.files
    offset: int
    length: int

    @property
    def elem(self) -> int:
        """Bytes per element for the byte-plane shuffle (1 where that means nothing)."""
        import numpy as np

        if self.dtype == "bytes":
            return 1
        size = int(np.dtype(self.dtype).itemsize) if self.dtype != "bfloat16" else 2
        return size if size in (2, 4, 8) and self.length % size == 0 else 1


@dataclass
class ModelLayout:
    format: str  # onnx | tflite
    files: list[Path]  # files[0] is the model itself; ONNX external data files follow
    tensors: list[TensorSpan] = field(default_factory=list)

    def names(self) -> list[str]:
        """File names relative to the model's folder (what a delta rebuilds, in order)."""
        root = self.files[0].parent
        return [str(path.relative_to(root)) for path in self.files]


def read_layout(path: Path, *, external: bool = True) -> ModelLayout:
    """The layout of an ONNX or TFLite model; NotParsable for anything else or a malformed file.
    ``external=False`` refuses ONNX external data (a stored artifact is one file: whatever lies beside it in
    the store is another artifact)."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if len(head) >= 8 and head[4:8] == b"TFL3":
        from edgefleet.server.tensors._tflite import tflite_layout

        return tflite_layout(path)
    if head[:1] == b"\x08":  # ModelProto field 1 (ir_version), varint
        from edgefleet.server.tensors._onnx import onnx_layout

        return onnx_layout(path, external=external)
    raise NotParsable(f"{path.name}: neither ONNX nor TFLite")


def unique_key(seen: dict[str, int], name: str) -> str:
    count = seen.get(name, 0)
    seen[name] = count + 1
    return name if count == 0 else f"{name}#{count + 1}"


def drop_overlaps(tensors: list[TensorSpan]) -> list[TensorSpan]:
    """Spans sorted by (file, offset) with those that overlap an earlier one or are tiny left out."""
    kept: list[TensorSpan] = []
    for span in sorted(tensors, key=lambda t: (t.file, t.offset, -t.length)):
        if span.length < MIN_SPAN_BYTES:
            continue
        if kept and kept[-1].file == span.file and span.offset < kept[-1].offset + kept[-1].length:
            continue
        kept.append(span)
    return kept
