"""Run Telemetry in a process of its own (for the kill -9 test): ``python -m tests.telemetry.agent_proc STATE PORT``."""

from __future__ import annotations

import sys
import time

from edgefleet.agent.telemetry import Telemetry
from tests.telemetry.support import agent_config


def main() -> None:
    state, port = sys.argv[1], int(sys.argv[2])
    tel = Telemetry(agent_config(state, port), hw={"test": True}, agent_version="kill-9")  # type: ignore[arg-type]
    tel.start()
    while not tel.connected:
        time.sleep(0.02)
    print(f"connected session={tel.stats['session']}", flush=True)
    time.sleep(120)


if __name__ == "__main__":
    main()
