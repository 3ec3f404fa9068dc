"""A/B slots: durable install into the inactive slot, atomic pointer switch, rollback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgefleet.agent.ota.slots import SlotInfo, SlotStore
from edgefleet.agent.wire import ModelMeta


def info_for(data: bytes, version: int) -> SlotInfo:
    sha = hashlib.sha256(data).hexdigest()
    return SlotInfo(meta=ModelMeta(name="m", version=version, sha256=sha), file="model.onnx", format="onnx",
                    size=len(data), sha256=sha, issued_at=100.0 + version)


def test_install_switch_and_rollback(tmp_path: Path) -> None:
    slots = SlotStore(tmp_path)
    assert slots.active() is None and slots.inactive_slot() == "slot-a"
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.write_bytes(b"one" * 100)
    v2.write_bytes(b"two" * 200)
    slots.install("slot-a", v1, info_for(v1.read_bytes(), 1))
    assert slots.active() is None  # installed, not yet active
    slots.switch("slot-a")
    path, meta = slots.active()  # type: ignore[misc]
    assert (path, meta.version, path.read_bytes()) == (tmp_path / "models/slot-a/model.onnx", 1, b"one" * 100)
    assert slots.inactive_slot() == "slot-b"
    with pytest.raises(ValueError, match="slot-a is the active slot"):
        slots.install("slot-a", v2, info_for(v2.read_bytes(), 2))
    slots.install("slot-b", v2, info_for(v2.read_bytes(), 2))
    slots.switch("slot-b")
    assert json.loads((tmp_path / "models/active.json").read_text()) == {"active": "slot-b", "previous": "slot-a"}
    assert slots.active()[1].version == 2  # type: ignore[index]
    assert slots.rollback() == "slot-a"
    assert slots.active()[1].version == 1 and slots.previous_slot() is None  # type: ignore[index]
    assert slots.rollback() is None  # nothing further back
    leftovers = [p.name for p in (tmp_path / "models").rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # every temp file was renamed into place


def test_a_slot_with_a_torn_or_missing_file_is_not_active(tmp_path: Path) -> None:
    slots = SlotStore(tmp_path)
    src = tmp_path / "v1"
    src.write_bytes(b"x" * 1000)
    slots.install("slot-a", src, info_for(src.read_bytes(), 1))
    slots.switch("slot-a")
    model = tmp_path / "models/slot-a/model.onnx"
    model.write_bytes(b"x" * 10)  # truncated behind our back
    assert slots.active() is None
    model.write_bytes(b"y" * 1000)  # right size, wrong bytes: only a verifying read sees it
    assert slots.info("slot-a") is not None and slots.info("slot-a", verify=True) is None
    with pytest.raises(ValueError, match="slot-b holds no complete model"):
        slots.switch("slot-b")


def test_reinstall_first_invalidates_the_slot(tmp_path: Path) -> None:
    """meta.json goes first and comes back last: a cut in between leaves an empty slot, never a mix."""
    slots = SlotStore(tmp_path)
    src = tmp_path / "v1"
    src.write_bytes(b"a" * 64)
    slots.install("slot-b", src, info_for(src.read_bytes(), 1))
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError):
        slots.install("slot-b", missing, info_for(b"", 2))
    assert slots.info("slot-b") is None
