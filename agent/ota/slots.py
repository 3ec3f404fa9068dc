"""A/B model slots under ``state_dir/models`` and the active pointer, switched by atomic rename.

    models/slot-a/model.<ext>   the model file
    models/slot-a/meta.json     SlotInfo, written last: a slot without it is empty
    models/slot-b/...
    models/active.json          {"active": "slot-b", "previous": "slot-a"}
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.agent.ota.fsutil import atomic_write_json, fsync_dir, read_json, sha256_file
from edgefleet.agent.wire import ModelMeta

SLOTS = ("slot-a", "slot-b")


class SlotInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=(), defer_build=True)

    meta: ModelMeta
    file: str
    format: str
    size: int
    sha256: str
    issued_at: float | None = None  # of the manifest that installed it
    rollout_id: int | None = None
    installed_at: float = Field(default_factory=time.time)


class SlotStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "models"
        self.pointer = self.root / "active.json"

    # --- reading -------------------------------------------------------------------------------

    def _pointer(self) -> dict[str, str | None]:
        data = read_json(self.pointer)
        if not isinstance(data, dict):
            return {"active": None, "previous": None}
        active = data.get("active") if data.get("active") in SLOTS else None
        previous = data.get("previous") if data.get("previous") in SLOTS else None
        return {"active": active, "previous": previous}

    def active_slot(self) -> str | None:
        return self._pointer()["active"]

    def previous_slot(self) -> str | None:
        return self._pointer()["previous"]

    def inactive_slot(self) -> str:
        active = self.active_slot()
        return SLOTS[1] if active == SLOTS[0] else SLOTS[0]

    def info(self, slot: str, *, verify: bool = False) -> SlotInfo | None:
        """The slot's SlotInfo when its model file is complete (size, and sha256 with ``verify``)."""
        data = read_json(self.root / slot / "meta.json")
        if not isinstance(data, dict):
            return None
        try:
            info = SlotInfo.model_validate(data)
        except ValueError:
            return None
        path = self.root / slot / info.file
        try:
            if path.stat().st_size != info.size:
                return None
        except OSError:
            return None
        if verify and sha256_file(path) != info.sha256:
            return None
        return info

    def model_path(self, slot: str) -> Path | None:
        info = self.info(slot)
        return None if info is None else self.root / slot / info.file

    def active(self) -> tuple[Path, ModelMeta] | None:
        """The active model file and its meta, or None when no complete model is installed."""
        slot = self.active_slot()
        if slot is None:
            return None
        info = self.info(slot)
        if info is None:
            return None
        return self.root / slot / info.file, info.meta

    def active_info(self) -> SlotInfo | None:
        slot = self.active_slot()
        return None if slot is None else self.info(slot)

    # --- writing -------------------------------------------------------------------------------

    def install(self, slot: str, source: Path, info: SlotInfo) -> Path:
        """Copy ``source`` into ``slot`` durably; the slot holds nothing valid until meta.json lands."""
        if slot not in SLOTS:
            raise ValueError(f"unknown slot {slot!r}")
        if slot == self.active_slot():
            raise ValueError(f"{slot} is the active slot; install into the inactive one")
        directory = self.root / slot
        directory.mkdir(parents=True, exist_ok=True)
        meta = directory / "meta.json"
        if meta.exists():
            meta.unlink()
            fsync_dir(directory)
        for old in directory.iterdir():
            if old.is_file():
                old.unlink()
        target = directory / info.file
        tmp = directory / f".{info.file}.tmp"
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
        fsync_dir(directory)
        atomic_write_json(meta, info.model_dump(mode="json"))
        return target

    def switch(self, slot: str) -> None:
        """Make ``slot`` active; the one active before becomes ``previous`` (the rollback target)."""
        if self.info(slot) is None:
            raise ValueError(f"{slot} holds no complete model")
        current = self._pointer()
        previous = current["active"] if current["active"] != slot else current["previous"]
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.pointer, {"active": slot, "previous": previous})

    def set_pointer(self, active: str | None, previous: str | None) -> None:
        atomic_write_json(self.pointer, {"active": active, "previous": previous})

    def rollback(self) -> str | None:
        """Point back at the previous slot; returns it (None when there is nothing to go back to)."""
        current = self._pointer()
        previous = current["previous"]
        if previous is None or self.info(previous) is None:
            return None
        self.set_pointer(previous, None)
        return previous
