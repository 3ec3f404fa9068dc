"""The device's token: kept in ``state_dir/device-token`` across restarts, obtained by enrolling, and renewed
when the server stops taking it (an operator reset) by enrolling again *presenting it*, so the server
can tell the device from someone who only holds the shared enrollment token.

A refusal (401/403/409) is remembered for one poll interval: the device asks again at its next poll, not
in a loop, and its one warning line says why. Inference never waits on any of this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.errors import ConfigError, Refused
from agent.ota.serverapi import ManifestReply, ServerApi, load_token, save_token
from agent.wire import EnrollRequest

log = logging.getLogger(__name__)

Hardware = Callable[[], tuple[str | None, dict[str, Any]]]  # (device class, hw) sent with the enrollment


class Enrollment:
    def __init__(self, config: AgentConfig, state_dir: Path, hardware: Hardware,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.state_dir = state_dir
        self.hardware = hardware
        self.clock = clock
        self._refused: tuple[float, Refused] | None = None

    def token(self, api: ServerApi) -> str:
        """The configured token, the one saved by an earlier enrollment, or a new one."""
        return self.config.server.token or load_token(self.state_dir) or self.enroll(api, current=None)

    def manifest(self, api: ServerApi, etag: str | None) -> ManifestReply:
        """``api.manifest``; when the server no longer takes the device's token (401), enroll again once."""
        device_id = self.config.device_id
        try:
            return api.manifest(device_id, etag)
        except Refused as exc:
            if exc.status != 401 or self.config.server.token:
                raise
            log.warning("the update server no longer takes this device's token (%s); enrolling again", exc)
        api.token = self.enroll(api, current=api.token)
        return api.manifest(device_id, etag)

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
        save_token(self.state_dir, answer.token)
        if answer.status == "pending":
            log.warning("enrolled as %s, waiting for the operator's approval (edgefleet devices approve %s)",
                        self.config.device_id, self.config.device_id)
        else:
            log.info("enrolled as %s", self.config.device_id)
        return answer.token
