"""TFLite: the buffers table of a flatbuffer Model (memory-mapped), each buffer named by its first tensor.

Field slots are schema.fbs's: Model.subgraphs (2), Model.buffers (4); SubGraph.tensors (0); Tensor.shape (0),
type (1), buffer (2), name (3); Buffer.data (0), or offset (1) and size (2) for data stored after the
flatbuffer (models over 2 GB).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from flatbuffers import number_types as N
from flatbuffers.table import Table

from edgefleet.server.tensors._layout import ModelLayout, NotParsable, TensorSpan, drop_overlaps, unique_key

# TensorType -> numpy dtype name
DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16",
          8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64", 15: "uint32", 16: "uint16",
          18: "bfloat16"}


def _slot(index: int) -> int:
    return 4 + 2 * index


def _tables(table: Table, index: int) -> list[Table]:
    offset = table.Offset(_slot(index))
    if not offset:
        return []
    start, count = table.Vector(offset), table.VectorLen(offset)
    return [Table(table.Bytes, table.Indirect(start + 4 * i)) for i in range(count)]


def _ints(table: Table, index: int) -> tuple[int, ...]:
    offset = table.Offset(_slot(index))
    if not offset:
        return ()
    start = table.Vector(offset)
    return tuple(table.Get(N.Int32Flags, start + 4 * i) for i in range(table.VectorLen(offset)))


def _scalar(table: Table, index: int, flags: type, default: int) -> int:
    offset = table.Offset(_slot(index))
    return int(table.Get(flags, table.Pos + offset)) if offset else default


def _name(table: Table) -> str:
    offset = table.Offset(_slot(3))
    return table.String(table.Pos + offset).decode("utf-8", "replace") if offset else ""


def tflite_layout(path: Path) -> ModelLayout:
    size = path.stat().st_size
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            spans = _spans(buf, size)
        except (struct.error, IndexError, ValueError) as exc:
            raise NotParsable(f"{path.name}: malformed TFLite flatbuffer ({exc})") from exc
    return ModelLayout("tflite", [path], drop_overlaps(spans))


def _spans(buf: mmap.mmap, size: int) -> list[TensorSpan]:
    model = Table(buf, int(struct.unpack_from("<I", buf, 0)[0]))
    buffers = _tables(model, 4)
    named: dict[int, tuple[str, str, tuple[int, ...]]] = {}
    seen: dict[str, int] = {}
    for sub_index, subgraph in enumerate(_tables(model, 2)):
        for tensor in _tables(subgraph, 0):
            buffer = _scalar(tensor, 2, N.Uint32Flags, 0)
            if buffer and buffer not in named:
                dtype = DTYPES.get(_scalar(tensor, 1, N.Int8Flags, 0), "bytes")
                key = unique_key(seen, f"{sub_index}:{_name(tensor)}")
                named[buffer] = (key, dtype, _ints(tensor, 0))
    spans: list[TensorSpan] = []
    for index, entry in enumerate(buffers):
        key, dtype, shape = named.get(index, (unique_key(seen, f"buffer:{index}"), "bytes", ()))
        data = entry.Offset(_slot(0))
        if data:
            start, length = entry.Vector(data), entry.VectorLen(data)
        else:
            start = _scalar(entry, 1, N.Uint64Flags, 0)
            length = _scalar(entry, 2, N.Uint64Flags, 0)
            if start <= 1:  # 0/1: no data (1 marks "deduplicated" in the converter's output)
                continue
        if start + length > size:
            raise NotParsable(f"buffer {index} runs past the end of the file")
        if length:
            spans.append(TensorSpan(key, dtype, shape, 0, start, length))
    return spans
