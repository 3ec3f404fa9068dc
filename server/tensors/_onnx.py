"""ONNX: walk the protobuf wire format of a ModelProto (memory-mapped) to the TensorProtos and their data.

Field numbers are onnx.proto3's. The walk visits graph initializers (5) and sparse initializers (15),
every node's tensor attributes (t, tensors, sparse tensors) and subgraphs (g, graphs), and the
functions of the model (25). A tensor's data is ``raw_data`` (9), packed ``float_data`` (4) or
``double_data`` (10), or an external file named by ``external_data`` (13) when ``data_location`` (14) is 1.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from edgefleet.server.tensors._layout import ModelLayout, NotParsable, TensorSpan, drop_overlaps, unique_key

# TensorProto.DataType -> numpy dtype name ("bytes": no fixed width the shuffle could use)
DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
          10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128",
          16: "bfloat16"}
MAX_DEPTH = 32  # nested subgraphs


class _Wire:
    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.size = len(buf)

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise NotParsable("truncated or malformed varint")
            byte = self.buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """(field number, wire type, value or payload start, payload end) for each field in [start, end)."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = self.varint(pos, end)
                yield number, wire, value, pos
            elif wire == 1:
                pos += 8
                yield number, wire, pos - 8, pos
            elif wire == 2:
                length, pos = self.varint(pos, end)
                if pos + length > end:
                    raise NotParsable("a length-delimited field runs past its message")
                yield number, wire, pos, pos + length
                pos += length
            elif wire == 5:
                pos += 4
                yield number, wire, pos - 4, pos
            else:
                raise NotParsable(f"unsupported wire type {wire}")
        if pos != end:
            raise NotParsable("a field runs past its message")

    def text(self, start: int, end: int) -> str:
        return bytes(self.buf[start:end]).decode("utf-8", "replace")

    def packed_varints(self, start: int, end: int) -> list[int]:
        values, pos = [], start
        while pos < end:
            value, pos = self.varint(pos, end)
            values.append(value)
        return values


class _Walker:
    def __init__(self, wire: _Wire, folder: Path | None) -> None:
        self.wire = wire
        self.folder = folder  # None: external data is refused
        self.files: list[Path] = []
        self.tensors: list[TensorSpan] = []
        self.seen: dict[str, int] = {}

    def model(self) -> None:
        for number, wire, start, end in self.wire.fields(0, self.wire.size):
            if number == 7 and wire == 2:
                self.graph(start, end, 0)
            elif number == 25 and wire == 2:
                self.function(start, end)

    def function(self, start: int, end: int) -> None:
        name = ""
        for number, wire, s, e in self.wire.fields(start, end):
            if number == 1 and wire == 2:
                name = self.wire.text(s, e)
            elif number == 7 and wire == 2:
                self.node(s, e, 1, prefix=f"{name}/")

    def graph(self, start: int, end: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise NotParsable("subgraphs nested too deep")
        for number, wire, s, e in self.wire.fields(start, end):
            if wire != 2:
                continue
            if number == 1:
                self.node(s, e, depth)
            elif number == 5:
                self.tensor(s, e, "")
            elif number == 15:
                self.sparse(s, e, "")

    def node(self, start: int, end: int, depth: int, prefix: str = "") -> None:
        output = ""
        attributes: list[tuple[int, int]] = []
        for number, wire, s, e in self.wire.fields(start, end):
            if number == 2 and wire == 2 and not output:
                output = self.wire.text(s, e)
            elif number == 5 and wire == 2:
                attributes.append((s, e))
        for s, e in attributes:
            self.attribute(s, e, depth, f"{prefix}{output}")

    def attribute(self, start: int, end: int, depth: int, owner: str) -> None:
        name = ""
        parts: list[tuple[int, int, int]] = []
        for number, wire, s, e in self.wire.fields(start, end):
            if number == 1 and wire == 2:
                name = self.wire.text(s, e)
            elif wire == 2 and number in (5, 6, 10, 11, 22, 23):
                parts.append((number, s, e))
        for index, (number, s, e) in enumerate(parts):
            fallback = f"{owner}.{name}" if len(parts) == 1 else f"{owner}.{name}[{index}]"
            if number in (5, 10):
                self.tensor(s, e, fallback)
            elif number in (22, 23):
                self.sparse(s, e, fallback)
            else:
                self.graph(s, e, depth + 1)

    def sparse(self, start: int, end: int, fallback: str) -> None:
        for number, wire, s, e in self.wire.fields(start, end):
            if wire == 2 and number in (1, 2):
                self.tensor(s, e, f"{fallback}/{'values' if number == 1 else 'indices'}")

    def tensor(self, start: int, end: int, fallback: str) -> None:
        dims: list[int] = []
        dtype_code, name, data, external, location = 0, "", None, {}, 0
        for number, wire, s, e in self.wire.fields(start, end):
            if number == 1:
                dims += self.wire.packed_varints(s, e) if wire == 2 else [s]
            elif number == 2 and wire == 0:
                dtype_code = s
            elif number == 8 and wire == 2:
                name = self.wire.text(s, e)
            elif number == 9 and wire == 2:
                data = (s, e)
            elif number in (4, 10) and wire == 2 and data is None:
                data = (s, e)  # packed float_data / double_data: little-endian IEEE-754, as raw_data
            elif number == 13 and wire == 2:
                key, value = self.entry(s, e)
                external[key] = value
            elif number == 14 and wire == 0:
                location = s
        dtype = DTYPES.get(dtype_code, "bytes")
        key = unique_key(self.seen, name or fallback)
        if location == 1:
            self.external(key, dtype, tuple(dims), external)
        elif data is not None and data[1] > data[0]:
            self.tensors.append(TensorSpan(key, dtype, tuple(dims), 0, data[0], data[1] - data[0]))

    def entry(self, start: int, end: int) -> tuple[str, str]:
        key = value = ""
        for number, wire, s, e in self.wire.fields(start, end):
            if number == 1 and wire == 2:
                key = self.wire.text(s, e)
            elif number == 2 and wire == 2:
                value = self.wire.text(s, e)
        return key, value

    def external(self, key: str, dtype: str, dims: tuple[int, ...], info: dict[str, str]) -> None:
        location = info.get("location", "")
        if self.folder is None:
            raise NotParsable(f"tensor {key} keeps its data in an external file ({location!r})")
        relative = PurePosixPath(location)
        if not location or relative.is_absolute() or ".." in relative.parts:
            raise NotParsable(f"external data location {location!r} is not a file beside the model")
        path = self.folder / relative
        if not path.is_file():
            raise NotParsable(f"external data file {location} is missing")
        if path not in self.files:
            self.files.append(path)
        try:
            offset = int(info.get("offset") or 0)
            size = path.stat().st_size
            length = int(info["length"]) if info.get("length") else size - offset
        except ValueError as exc:
            raise NotParsable(f"external data of {key}: {exc}") from exc
        if offset < 0 or length < 0 or offset + length > size:
            raise NotParsable(f"external data of {key} runs past {location}")
        if length:
            self.tensors.append(TensorSpan(key, dtype, dims, self.files.index(path) + 1, offset, length))


def onnx_layout(path: Path, *, external: bool = True) -> ModelLayout:
    size = path.stat().st_size
    if size == 0:
        raise NotParsable(f"{path.name} is empty")
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        walker = _Walker(_Wire(buf), path.parent if external else None)
        try:
            walker.model()
        except (IndexError, ValueError) as exc:
            raise NotParsable(f"{path.name}: malformed ONNX protobuf ({exc})") from exc
    return ModelLayout("onnx", [path, *walker.files], drop_overlaps(walker.tensors))
