from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import pytest

# Emulated runs (scripts/test-arm64.sh) are many times slower: waits for something to happen are
# scaled by this; assertions about speed (a stop within 5 s, a rate) are not. Not an EDGEFLEET_*
# variable: the agent and the server take those as config overrides.
SLOWDOWN = max(1.0, float(os.environ.get("TEST_TIME_SCALE") or 1))
# A test that judges latency against the real model's speed: under qemu an inference of the ~2 ms test
# model takes ~0.5 s, so a trial window sees too few of them and the ratios measure the emulator.
native_speed = pytest.mark.skipif(SLOWDOWN > 1, reason="judges model latency: needs native speed, not emulation")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> object:
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
