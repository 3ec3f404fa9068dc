"""``python -m tests.ota.agent_proc CONFIG.json``: a small agent process (ModelHost + UpdateClient, no daemon).

Start-up as the daemon does it: recover(), load the active slot, serve traffic; then poll until
the update in hand ends. Prints one JSON line: the state, the version serving, and whether the
active slot's file verifies. EDGEFLEET_TEST_CRASH_AT=<state> makes it die (exit 137) right after
saving that state.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon.host import ModelHost
from edgefleet.agent.ota.client import UpdateClient
from tests.ota.helpers import ort_loader
from tests.ota.rig import EventLog, Traffic


def main() -> int:
    config = AgentConfig.model_validate_json(Path(sys.argv[1]).read_text())
    host = ModelHost()
    client = UpdateClient(config, host, EventLog(), ort_loader)
    recovered = client.recover().value
    active = client.slots.active()
    if active is not None:
        host.swap(ort_loader(*active), active[1])
    with Traffic(host) as traffic:
        deadline = time.monotonic() + 40
        state = client.run_once()
        while state.value in ("downloading", "verifying", "installing", "trial") and time.monotonic() < deadline:
            time.sleep(0.05)
            state = client.run_once()
        time.sleep(0.3)  # serve a little after the update ended, whatever the outcome
    slot = client.slots.active_slot()
    info = client.slots.info(slot, verify=True) if slot else None
    print(json.dumps({"recovered": recovered, "state": state.value,
                      "serving": host.meta.version if host.meta else None,
                      "active_verified": info is not None and host.meta is not None
                      and info.sha256 == host.meta.sha256,
                      "failed": sum(traffic.failed.values()), "served": sum(traffic.served.values()),
                      "reason": client.record.reason}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
