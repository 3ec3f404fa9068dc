"""A full disk under a real agent: its state directory is a 3 MB tmpfs, filled up while an update
downloads (and while telemetry is spooled). The update ends with a clean error, the old model keeps
serving, nothing on disk is corrupt; when space returns the update is retried and succeeds, and the
telemetry stream has no seq gap (what could not be stored was never numbered)."""

from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.ota.helpers import make_big_classifier
from tests.reliability.support import (
    DaemonAgent,
    Proxy,
    Versions,
    agent_yaml,
    api_port,
    assert_exact_outputs,
    broker_server_behind_proxy,
    check_state_files,
)
from tests.reliability.test_outages import Hammer, seqs_in_order, spool_state
from tests.support.broker import Mosquitto
from tests.support.net import wait_until
from tests.support.server import RunningServer
from tests.telemetry.support import ROOT, Collector


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, RunningServer, Proxy]]:
    with broker_server_behind_proxy(tmp_path_factory.mktemp("diskfull")) as parts:
        yield parts


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "state"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the disk is full; return it."""
    filler = directory / "filler.bin"
    with open(filler, "wb", buffering=0) as out:
        block = b"\xaa" * 16384
        try:
            while True:
                out.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    for size in (4096, 512, 1):
        try:
            with open(filler, "ab", buffering=0) as out:
                while True:
                    out.write(b"\xaa" * size)
        except OSError:
            pass
    return filler


def test_disk_fills_during_download_and_spooling(world: tuple[Mosquitto, RunningServer, Proxy], tmp_path: Path,
                                                 small_disk: Path) -> None:
    broker, server, proxy = world
    device_id = "disk-01"
    ops = Collector(broker.port, [f"{ROOT}/{device_id}/telemetry", f"{ROOT}/{device_id}/events"],
                    client_id="ops-disk", persistent=True)
    config = agent_yaml(small_disk, device_id, server=server, mqtt_port=broker.port, api_port=api_port(),
                        server_url=proxy.url, telemetry={"interval_s": 0.3},
                        update={"retry_failed_s": 1.0})
    agent = DaemonAgent(tmp_path / "agent", config).start()
    versions = Versions(server, tmp_path / "models", "disk")
    with agent, closing(ops):
        agent.wait_enrolled()
        v1 = versions.push(seed=0)
        versions.roll_out(v1["version"], [device_id])
        wait_until(lambda: agent.update_state() == "committed", timeout=60)
        big = versions.push(seed=51, path=make_big_classifier(tmp_path / "big.onnx", seed=51, hidden=1024))
        partial = small_disk / "update" / "partial"
        with Hammer(agent) as hammer:
            proxy.mode, proxy.drip_bps = "drip", 150_000
            versions.roll_out(big["version"], [device_id])
            wait_until(lambda: sum(p.stat().st_size for p in partial.glob("*")) > 60_000, timeout=30,
                       interval=0.02)
            filler = fill(small_disk)
            full_at = time.monotonic()
            wait_until(lambda: agent.update_state() == "failed", timeout=30)
            time.sleep(1.5)  # telemetry keeps trying to spool on the full disk
            found = check_state_files(small_disk)
            assert found["sha256"] == v1["sha256"]
            assert_exact_outputs(agent.wait_serving(), seed=0)
            served_while_full = hammer.ok
            filler.unlink()
            proxy.mode = "pass"
            wait_until(lambda: agent.update_state() == "committed" and
                       agent.wait_serving()["model"]["sha256"] == big["sha256"], timeout=60)
            full_for = time.monotonic() - full_at
        assert hammer.failed == [], hammer.failed[:10]
        assert hammer.longest_gap_s < 2.0 and served_while_full > 0
        assert check_state_files(small_disk)["sha256"] == big["sha256"]
        log = agent.log()
        assert "disk full while writing" in log or "MB free in" in log, log[-3000:]
        agent.stop()
        last, queued, _dropped = spool_state(small_disk / "telemetry-spool.db")
        assert queued == 0
        wait_until(lambda: max(seqs_in_order(ops, device_id), default=0) >= last, timeout=20)
        seen = seqs_in_order(ops, device_id)
        assert seen == list(range(1, last + 1)), seen
        errors = max(doc.get("spool", {}).get("errors", 0) for t, doc, _ in ops.messages if t.endswith("/telemetry"))
        assert errors > 0  # the spool counted the writes the full disk refused, and said so
        failed = [doc for t, doc, _ in ops.messages if t.endswith("/events") and doc["type"] == "update.failed"]
        assert failed and "disk full" in failed[0]["reason"]
        print(f"disk full for {full_for:.1f}s: update failed cleanly ({failed[0]['reason']}), v1 served "
              f"{served_while_full} requests meanwhile, 0 failed; {errors} spool writes refused; then v2 committed; "
              f"seq 1..{last} delivered with no gap")
