"""server/sandbox.py with real child processes: results, and each limit (wall clock, CPU, memory, shutdown)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import bsdiff4
import numpy as np
import pytest

from edgefleet.server import sandbox
from edgefleet.server.sandbox import Limits, SandboxError
from tests.support.models import make_onnx_endless_loop, make_onnx_image_classifier

ROOMY = Limits(timeout_s=60, cpu_s=60, memory_mb=4096)


def test_a_task_returns_its_result(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"abc" * 5000)
    new.write_bytes(b"abd" * 5000)
    result = sandbox.run("bsdiff", {"old": str(old), "new": str(new), "patch": str(tmp_path / "p")}, ROOMY)
    patch = (tmp_path / "p").read_bytes()
    assert result == {"size": len(patch)} and bsdiff4.patch(old.read_bytes(), patch) == new.read_bytes()


def test_inspect_reads_the_signature_and_profile(tmp_path: Path) -> None:
    model = make_onnx_image_classifier(tmp_path / "m.onnx")
    found = sandbox.run("inspect", {"path": str(model), "task": "classification", "name": "m"}, ROOMY)
    assert found["format"] == "onnx" and found["inputs"][0]["name"] == "image"
    assert found["source"] == "synthetic" and found["profile"]["samples"] > 0
    assert found["profile"]["synthetic"] is True  # devices score it without an alarm


def test_a_file_that_is_not_a_model_is_the_tasks_own_refusal(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08" + os.urandom(500))
    with pytest.raises(SandboxError) as caught:
        sandbox.run("inspect", {"path": str(junk)}, ROOMY)
    assert caught.value.kind == "refused" and caught.value.detail == "not_a_model"
    assert "\n" not in str(caught.value)


def test_the_wall_clock_limit(tmp_path: Path) -> None:
    endless = make_onnx_endless_loop(tmp_path / "endless.onnx")
    started = time.monotonic()
    with pytest.raises(SandboxError, match=r"^did not finish within 3s$") as caught:
        sandbox.run("inspect", {"path": str(endless)}, Limits(timeout_s=3, cpu_s=600, memory_mb=4096))
    assert caught.value.kind == "timeout" and time.monotonic() - started < 10


def random_pair(tmp_path: Path, size: int) -> dict[str, str]:
    (tmp_path / "a").write_bytes(os.urandom(size))
    (tmp_path / "b").write_bytes(os.urandom(size))
    return {"old": str(tmp_path / "a"), "new": str(tmp_path / "b"), "patch": str(tmp_path / "p")}


def test_the_cpu_limit(tmp_path: Path) -> None:
    """bsdiff of 2 MB of random bytes takes several CPU seconds."""
    with pytest.raises(SandboxError, match=r"^used more than 1s of CPU time$") as caught:
        sandbox.run("bsdiff", random_pair(tmp_path, 2_000_000), Limits(timeout_s=120, cpu_s=1, memory_mb=4096))
    assert caught.value.kind == "cpu"


def test_the_memory_limit(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"^needed more than 48 MB of memory") as caught:
        sandbox.run("bsdiff", random_pair(tmp_path, 2_000_000), Limits(timeout_s=120, cpu_s=120, memory_mb=48))
    assert caught.value.kind == "memory"


def test_kill_all_ends_running_children_at_once(tmp_path: Path) -> None:
    endless = make_onnx_endless_loop(tmp_path / "endless.onnx")
    failures: list[SandboxError] = []

    def inspect() -> None:
        try:
            sandbox.run("inspect", {"path": str(endless)}, Limits(timeout_s=120, cpu_s=120, memory_mb=4096))
        except SandboxError as exc:
            failures.append(exc)

    worker = threading.Thread(target=inspect)
    worker.start()
    time.sleep(2.0)
    try:
        started = time.monotonic()
        assert sandbox.kill_all() == 1
        worker.join(timeout=10)
        assert not worker.is_alive() and time.monotonic() - started < 5
        assert [str(f) for f in failures] == ["stopped: the server is shutting down"]
        with pytest.raises(SandboxError, match="shutting down"):
            sandbox.run("bsdiff", {}, ROOMY)  # nothing new starts once the server is stopping
    finally:
        sandbox.reopen()


def test_a_calibrated_profile_carries_no_key_an_older_agent_would_refuse(tmp_path: Path) -> None:
    """Agents before issue 18 validate the profile with extra keys forbidden: a real reference stays in their shape."""
    from edgefleet.agent.quality.drift import ReferenceProfile
    from edgefleet.server.quality import compute_profile

    model = make_onnx_image_classifier(tmp_path / "m.onnx")
    inputs = [{"name": "image", "dtype": "float32", "shape": [1, 3, 32, 32]}]
    calibration = {"image": np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)}
    profile, source, _ = compute_profile(model, task="classification", inputs=inputs, preprocess=None,
                                         calibration=calibration, name="m")
    assert source == "calibration" and profile is not None and "synthetic" not in profile
    older_fields = set(ReferenceProfile.model_fields) - {"synthetic"}
    assert set(profile) <= older_fields and ReferenceProfile.model_validate(profile).synthetic is False
