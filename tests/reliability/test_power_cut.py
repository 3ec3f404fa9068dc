"""Power cuts: ``kill -9`` a real agent at random instants of its updates, many times over."""

from __future__ import annotations

import os
import random
from pathlib import Path

from tests.reliability.powercut import run_parallel
from tests.support.broker import Mosquitto
from tests.support.server import RunningServer

CYCLES = int(os.environ.get("RELIABILITY_POWER_CUTS", "50"))


def test_kill_9_at_random_instants_of_updates(server: RunningServer, broker: Mosquitto, tmp_path: Path) -> None:
    seed = int(os.environ.get("RELIABILITY_SEED", random.randrange(1 << 30)))
    print(f"power-cut seed {seed} (RELIABILITY_SEED={seed} reproduces the instants)")
    report = run_parallel(server, broker.port, tmp_path, cycles=CYCLES, seed=seed, agents=2)
    print("power cuts:", report.summary())
    assert report.cycles == CYCLES and report.corrupt == 0
    assert report.committed + report.rolled_back == CYCLES
    assert report.committed > 0  # random instants past the end of an update let some finish
    assert report.offered["tensor"] >= CYCLES // 4  # the fine-tuned cycles' updates are tensor deltas
    # How many cut updates still finish through the tensor delta depends on the machine's speed (0 of 50 under a
    # load average of 6): printed above, not asserted. An installed tensor delta, byte-exact, is asserted by
    # tests/ota/test_tensor_updates.py; here what counts is that no cut during one corrupts anything.
