"""The device's token: kept in ``state_dir/device-token`` across restarts, obtained by enrolling, and renewed
when the server stops taking it (an operator reset) by enrolling again *presenting it*, so the server
can tell the device from someone who only holds the shared enrollment token.

A refusal (401/403/409) is remembered for one poll interval: the device asks again at its next poll, not
in a loop, and its one warning line says why. Inference never waits on any of this.

The server stores nothing from an id that is not enrolled, so telemetry waits in the spool (it does not
connect to the broker) until the device holds a token the server takes: ``enrolled(config)``. While the
server has it waiting for approval, ``device-token.pending`` says so; the first manifest answered removes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.errors import ConfigError, Refused
from edgefleet.agent.ota.serverapi import ManifestReply, ServerApi, load_token, save_token
from edgefleet.agent.wire import EnrollRequest

log = logging.getLogger(__name__)

Hardware = Callable[[], tuple[str | None, dict[str, Any]]]  # (device class, hw) sent with the enrollment
PENDING_FILE = "device-token.pending"


def enrolled(config: AgentConfig) -> bool:
    """Whether the device holds a token the server takes (configured, or enrolled and not waiting)."""
    if config.server.token:
        return True
    return load_token(config.state_dir) is not None and not (config.state_dir / PENDING_FILE).exists()


class Enrollment:
    def __init__(self, config: AgentConfig, state_dir: Path, hardware: Hardware,
                 clock: Callable[[], float] = time.monotonic, on_enrolled: Callable[[], None] | None = None) -> None:
        self.config = config
        self.state_dir = state_dir
        self.hardware = hardware
        self.clock = clock
        # called when the server starts taking the device again (enrolled anew, or approved): what the
        # server dropped meanwhile includes the retained birth, so the agent announces itself once more
        self.on_enrolled = on_enrolled
        self._refused: tuple[float, Refused] | None = None

    def token(self, api: ServerApi) -> str:
        """The configured token, the one saved by an earlier enrollment, or a new one."""
        return self.config.server.token or load_token(self.state_dir) or self.enroll(api, current=None)

    def manifest(self, api: ServerApi, etag: str | None) -> ManifestReply:
        """``api.manifest``; when the server no longer takes the device's token (401), enroll again once."""
        device_id = self.config.device_id
        try:
            reply = api.manifest(device_id, etag)
        except Refused as exc:
            if exc.status != 401 or self.config.server.token:
                raise
            log.warning("the update server no longer takes this device's token (%s); enrolling again", exc)
            api.token = self.enroll(api, current=api.token)
            reply = api.manifest(device_id, etag)
        pending = self.state_dir / PENDING_FILE
        if pending.exists():  # answered: the operator approved it
            pending.unlink(missing_ok=True)
            self._announce()
        return reply

    def _announce(self) -> None:
        if self.on_enrolled is not None:
            try:
                self.on_enrolled()
            except Exception as exc:  # telemetry is informative: never let it stop the update client
                log.warning("announcing the enrollment failed: %s", exc)

    def enroll(self, api: ServerApi, *, current: str | None) -> str:
        """Enroll with ``server.enrollment_token`` (presenting ``current``, the token held now); save the token."""
        server = self.config.server
        if not server.enrollment_token:
            raise ConfigError("no server.token and no server.enrollment_token to enroll with")
        if self._refused is not None and self.clock() - self._refused[0] < server.poll_interval_s:
            raise self._refused[1]  # asked less than a poll interval ago: the same answer, no request
        device_class, hw = self.hardware()
        request = EnrollRequest(device_id=self.config.device_id, enrollment_token=server.enrollment_token,
                                device_class=server.device_class or device_class, tags=server.tags, hw=hw)
        try:
            answer = api.enroll(request, current_token=current)
        except Refused as exc:
            self._refused = (self.clock(), exc)
            raise
        self._refused = None
        pending = self.state_dir / PENDING_FILE
        if answer.status == "pending":
            pending.parent.mkdir(parents=True, exist_ok=True)
            pending.write_bytes(b"")  # before the token: telemetry never sees a token without it
            save_token(self.state_dir, answer.token)
            log.warning("enrolled as %s, waiting for the operator's approval (edgefleet devices approve %s)",
                        self.config.device_id, self.config.device_id)
        else:
            save_token(self.state_dir, answer.token)
            pending.unlink(missing_ok=True)
            log.info("enrolled as %s", self.config.device_id)
            self._announce()
        return answer.token
