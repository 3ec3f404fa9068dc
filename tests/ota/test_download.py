"""Resumable downloads and delta fallback, over the real server's artifact and delta routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bsdiff4
import pytest
import requests

from edgefleet.agent.errors import UpdateRejected
from edgefleet.agent.ota.client import UpdateClient
from edgefleet.agent.ota.download import apply_delta
from edgefleet.agent.ota.http import HttpError, Session
from tests.ota.helpers import make_big_classifier, ort_loader, push, roll_out
from tests.ota.rig import Device, Traffic
from tests.support.server import RunningServer


class Link(Session):
    """The device's link: can drop the first artifact transfer after ``cut_after`` bytes, or flip a byte of
    delta patches in transit; logs each artifact/delta request's Range header and status."""

    def __init__(self, cut_after: int | None = None, corrupt_deltas: bool = False) -> None:
        super().__init__()
        self.cut_after = cut_after
        self.corrupt_deltas = corrupt_deltas
        self.log: list[tuple[str, str | None, int]] = []

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        response = super().request(method, url, *args, **kwargs)
        kind = "artifact" if "/v1/artifacts/" in url else "delta" if "/v1/deltas/" in url else None
        if kind is None:
            return response
        self.log.append((kind, (kwargs.get("headers") or {}).get("Range"), response.status_code))
        inner = response.iter_content
        if kind == "artifact" and self.cut_after is not None:
            limit, self.cut_after = self.cut_after, None

            def cut(chunk_size: int = 64 * 1024) -> Any:
                sent = 0
                for block in inner(chunk_size):
                    if sent + len(block) > limit:
                        yield block[: limit - sent]
                        raise HttpError("connection reset by peer (test)")
                    sent += len(block)
                    yield block

            response.iter_content = cut  # type: ignore[method-assign,assignment]
        if kind == "delta" and self.corrupt_deltas:
            def flip(chunk_size: int = 64 * 1024) -> Any:
                for block in inner(chunk_size):
                    yield bytes([block[0] ^ 0xFF]) + block[1:]

            response.iter_content = flip  # type: ignore[method-assign,assignment]
        return response


def test_interrupted_download_resumes_with_only_the_remainder(server: RunningServer, tmp_path: Path) -> None:
    big = make_big_classifier(tmp_path / "big.onnx", seed=3)
    size = big.stat().st_size
    device = Device(server, tmp_path, "dl-resume")
    link = Link(cut_after=size // 3)
    device.client = UpdateClient(device.config, device.host, device.log, ort_loader, session=link)
    pushed = push(server.url, server.admin(), "resume", big)
    roll_out(server.url, server.admin(), "resume", pushed["version"], ["dl-resume"])
    assert device.client.run_once().value == "downloading"  # the link dropped mid-way
    part = tmp_path / "dl-resume/update/partial" / f"{pushed['sha256']}.part"
    assert part.stat().st_size == size // 3  # kept on disk for the next attempt
    assert device.client.bytes_transferred == size // 3
    with Traffic(device.host):
        assert device.update() == "committed"
    assert link.log == [("artifact", None, 200), ("artifact", f"bytes={size // 3}-", 206)]
    assert device.client.bytes_transferred == size  # the first third once, then only the remainder
    assert device.host.meta is not None and device.host.meta.sha256 == pushed["sha256"]


def test_a_delta_that_fails_falls_back_to_the_full_artifact(server: RunningServer, tmp_path: Path) -> None:
    base = make_big_classifier(tmp_path / "base.onnx", seed=4)
    tuned = make_big_classifier(tmp_path / "tuned.onnx", seed=4, tweak=200)
    device = Device(server, tmp_path, "dl-delta", trial={"window_s": 0.2, "min_inferences": 3})
    v1 = push(server.url, server.admin(), "fallback", base)
    roll_out(server.url, server.admin(), "fallback", 1, ["dl-delta"])
    with Traffic(device.host):
        assert device.update() == "committed"
    v2 = push(server.url, server.admin(), "fallback", tuned)
    link = Link(corrupt_deltas=True)
    device.client = UpdateClient(device.config, device.host, device.log, ort_loader, session=link)
    roll_out(server.url, server.admin(), "fallback", 2, ["dl-delta"])
    offered = requests.get(f"{server.url}/v1/devices/dl-delta/manifest", headers=device.client.api().auth,
                           timeout=10).json()["manifest"]["delta"]  # the smaller of bsdiff4 and tensor
    assert offered["from_sha256"] == v1["sha256"] and offered["algorithm"] in ("bsdiff4", "tensor")
    with Traffic(device.host):
        assert device.update() == "committed"
    assert [kind for kind, _, _ in link.log] == ["delta", "artifact"]
    assert device.client.bytes_transferred == offered["size"] + tuned.stat().st_size
    assert device.host.meta is not None and device.host.meta.sha256 == v2["sha256"]
    assert [f.get("via") for t, f in device.log.events if t == "update.committed"][-1] == "full"


def test_apply_delta(tmp_path: Path) -> None:
    old, new = b"abc" * 1000, b"abd" * 1000
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "patch").write_bytes(bsdiff4.diff(old, new))
    apply_delta(tmp_path / "old", tmp_path / "patch", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new
    (tmp_path / "patch").write_bytes(b"BSDIFF40garbage")
    with pytest.raises(UpdateRejected, match="delta does not apply"):
        apply_delta(tmp_path / "old", tmp_path / "patch", tmp_path / "out2")
