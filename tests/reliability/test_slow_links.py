"""Slow-drip and stalled downloads through a TCP proxy between the device and the real server: the
attempt times out, the partial file stays, and the next attempt asks for the remainder with Range."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ota.helpers import make_big_classifier
from tests.ota.rig import Device, Traffic
from tests.reliability.support import FAST_TRIAL, Proxy, Versions
from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Proxy]]:
    """A server whose manifests send devices through the proxy (public_url), so artifacts cross it too."""
    proxy = Proxy(0)
    running = start_server(tmp_path_factory.mktemp("proxied"), overrides={"public_url": proxy.url})
    proxy.target_port = int(running.url.rsplit(":", 1)[1])
    yield running, proxy
    running.stop()
    proxy.close()


@pytest.fixture
def server(proxied: tuple[RunningServer, Proxy]) -> RunningServer:
    return proxied[0]


@pytest.fixture
def proxy(proxied: tuple[RunningServer, Proxy]) -> Proxy:
    proxied[1].mode = "pass"
    proxied[1].ranges.clear()
    return proxied[1]


def _device(server: RunningServer, proxy: Proxy, tmp_path: Path, device_id: str, **update: object) -> Device:
    device = Device(server, tmp_path, device_id, trial=FAST_TRIAL, **update)
    device.config.server.url = proxy.url
    device.client._api = None  # the next call goes through the proxy (the token is on disk)
    return device


def _partial(tmp_path: Path, device_id: str, sha: str) -> int:
    part = tmp_path / device_id / "update" / "partial" / f"{sha}.part"
    return part.stat().st_size if part.exists() else 0


def test_stalled_download_times_out_and_resumes_with_range(server: RunningServer, proxy: Proxy,
                                                           tmp_path: Path) -> None:
    device = _device(server, proxy, tmp_path, "stall-01", stall_timeout_s=1.0)
    versions = Versions(server, tmp_path / "m", "stall")
    big = versions.push(seed=31, path=make_big_classifier(tmp_path / "big.onnx", seed=31))
    proxy.mode, proxy.stall_after = "stall", big["size"] // 3
    versions.roll_out(big["version"], ["stall-01"])
    started = time.monotonic()
    assert device.client.run_once().value == "downloading"  # the stalled attempt gave up
    took = time.monotonic() - started
    assert 1.0 <= took < 8.0, took  # stall_timeout_s, not for ever
    assert "timed out" in (device.client.last_error or "") or "interrupted" in (device.client.last_error or "")
    kept = _partial(tmp_path, "stall-01", big["sha256"])
    assert 0 < kept < big["size"]
    proxy.mode = "pass"
    with Traffic(device.host):
        assert device.update() == "committed"
    assert proxy.ranges[0] == "" and proxy.ranges[1] == f"bytes={kept}-", proxy.ranges
    assert device.client.bytes_transferred == big["size"]  # the kept third once, then only the remainder
    assert device.host.meta is not None and device.host.meta.sha256 == big["sha256"]


def test_slow_drip_hits_the_attempt_deadline_then_resumes(server: RunningServer, proxy: Proxy,
                                                          tmp_path: Path) -> None:
    device = _device(server, proxy, tmp_path, "drip-01", download_timeout_s=1.5, stall_timeout_s=5.0)
    versions = Versions(server, tmp_path / "m", "drip")
    big = versions.push(seed=32, path=make_big_classifier(tmp_path / "big.onnx", seed=32))
    proxy.mode, proxy.drip_bps = "drip", 100_000  # ~10 s for the whole file: over the 1.5 s budget
    versions.roll_out(big["version"], ["drip-01"])
    assert device.client.run_once().value == "downloading"
    assert "download too slow" in (device.client.last_error or ""), device.client.last_error
    kept = _partial(tmp_path, "drip-01", big["sha256"])
    assert 50_000 < kept < big["size"] // 2
    assert device.client.run_once().value == "downloading"  # a second slow attempt adds to the same file
    more = _partial(tmp_path, "drip-01", big["sha256"])
    assert more > kept and proxy.ranges[1] == f"bytes={kept}-"
    proxy.mode = "pass"
    with Traffic(device.host):
        assert device.update() == "committed"
    assert device.client.bytes_transferred == big["size"]
    assert device.host.meta is not None and device.host.meta.sha256 == big["sha256"]
