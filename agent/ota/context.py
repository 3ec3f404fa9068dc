"""What the update handlers share while the agent runs: its parts, and the figures of the update in hand.

Nothing here is persisted: what must survive a power cut is in the state record (agent/ota/state.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon.host import ModelHost
from edgefleet.agent.ota.slots import SlotStore
from edgefleet.agent.ota.trial import LatencyWindow
from edgefleet.agent.runtime.base import Model
from edgefleet.agent.wire import ModelMeta

if TYPE_CHECKING:
    from edgefleet.agent.ota.handlers.report import Reporter
    from edgefleet.agent.ota.http import Session
    from edgefleet.agent.ota.serverapi import ServerApi
    from edgefleet.agent.quality import ShadowRunner


class Loader(Protocol):
    """Opens a model file; ``threads`` overrides the runtime threads (the shadow instance runs on few)."""

    def __call__(self, path: Path, meta: ModelMeta, *, threads: int | None = None) -> Model: ...


@dataclass
class UpdateContext:
    config: AgentConfig
    host: ModelHost
    loader: Loader
    http: Callable[[], Session]  # the update client's session, made at its first use
    slots: SlotStore
    partial_dir: Path
    api: Callable[[], ServerApi]
    reporter: Reporter
    stop: threading.Event
    baseline: LatencyWindow
    bytes_transferred: int = 0  # artifact and delta bytes received, all attempts
    last_error: str | None = None
    old: tuple[Model, ModelMeta] | None = None  # the previous model, kept loaded during a trial
    trial_metrics: dict[str, Any] = field(default_factory=dict)
    baseline_latencies: list[float] = field(default_factory=list)  # the serving model's, right before the swap
    shadow: ShadowRunner | None = None  # the candidate being shadowed right now
    shadow_last: dict[str, Any] | None = None  # its final report (telemetry and UpdateReport)

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state_dir)

    def partial(self, sha256: str, suffix: str = ".bin") -> Path:
        return self.partial_dir / f"{sha256}{suffix}"

    def clear_partial(self) -> None:
        if self.partial_dir.exists():
            for path in self.partial_dir.iterdir():
                if path.is_file():
                    path.unlink(missing_ok=True)
