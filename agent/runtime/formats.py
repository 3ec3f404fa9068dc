"""Which format a model file is, from its content (never from its name).

- TFLite: a flatbuffer whose file identifier (bytes 4..8) is ``TFL3``.
- ExecuTorch ``.pte``: a flatbuffer whose identifier is ``ET`` followed by two digits (``ET12``).
- TorchScript / lite interpreter: a zip archive holding ``<root>/data.pkl`` (or ``bytecode.pkl``).
- ONNX: a protobuf ``ModelProto``. Its top-level fields are walked (no onnx package needed): every
  field must be well-formed, lie inside the file, and ``ir_version`` and ``graph`` must be present.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

from edgefleet.agent.errors import ModelLoadError

Format = Literal["tflite", "onnx", "torchscript", "pte"]

# ModelProto: field number -> wire type (0 varint, 2 length-delimited)
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def detect_format(path: str | Path) -> Format:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
            size = path.stat().st_size
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such model file") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path}: is a directory, not a model file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if size < 8:
        raise ModelLoadError(f"{path}: {size} bytes is too short to be a model")
    ident = head[4:8]
    if ident == b"TFL3":
        _check_flatbuffer_root(path, head, size, "TFLite")
        return "tflite"
    if ident[:2] == b"ET" and ident[2:4].isdigit():
        _check_flatbuffer_root(path, head, size, "ExecuTorch")
        return "pte"
    if head[:4] == b"PK\x03\x04":
        return _zip_format(path)
    if _looks_like_onnx(path, size):
        return "onnx"
    raise ModelLoadError(f"{path}: not a model file (no TFLite, ONNX, TorchScript or ExecuTorch content)")


def _check_flatbuffer_root(path: Path, head: bytes, size: int, kind: str) -> None:
    root = int.from_bytes(head[:4], "little")
    if root + 4 > size:
        raise ModelLoadError(f"{path}: truncated or corrupt {kind} file (root table past the end)")


def _zip_format(path: Path) -> Format:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path}: truncated or corrupt zip archive ({exc})") from exc
    for name in names:
        parts = name.split("/")
        if len(parts) == 2 and parts[1] in ("data.pkl", "bytecode.pkl", "constants.pkl"):
            return "torchscript"
    raise ModelLoadError(f"{path}: a zip archive without the TorchScript layout (<root>/data.pkl)")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _looks_like_onnx(path: Path, size: int) -> bool:
    """Walk ModelProto's top-level fields; large payloads are skipped by seeking, not read."""
    seen: set[int] = set()
    with path.open("rb") as fh:
        pos = 0
        while pos < size:
            fh.seek(pos)
            window = fh.read(20)
            try:
                key, after = _varint(window, 0)
                field, wire = key >> 3, key & 7
                if _ONNX_FIELDS.get(field) != wire:
                    return False
                if wire == 0:
                    _value, after = _varint(window, after)
                    pos += after
                else:
                    length, after = _varint(window, after)
                    pos += after + length
            except ValueError:
                return False
            if pos > size:
                raise ModelLoadError(f"{path}: truncated ONNX file (a field runs past the end)")
            seen.add(field)
    return 1 in seen and 7 in seen
