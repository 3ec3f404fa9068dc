"""Findings 5 and 7: any device token ran bsdiff on any two stored files and downloaded any of them;
samples were accepted unasked, and ill-typed records answered 500 after the JPEG was stored.

Now a device downloads only what its manifest offered (403, one line, otherwise), deltas are made only by
background jobs within their limits (not ready: the manifest offers the full artifact), and samples come
only after an ``upload_samples`` command, within its allowance, validated whole before anything is kept.
Against the real server with MQTT (commands go over the broker) on a local port.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.reliability.support import Versions
from tests.support.server import RunningServer, start_server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def manifest(srv: RunningServer, device: str, token: str) -> dict[str, Any]:
    got = requests.get(f"{srv.url}/v1/devices/{device}/manifest", headers=bearer(token), timeout=10)
    assert got.status_code == 200, got.text
    return dict(got.json()["manifest"])


def download(srv: RunningServer, path: str, token: str) -> requests.Response:
    return requests.get(srv.url + path, headers=bearer(token), timeout=30)


def commit(srv: RunningServer, device: str, token: str, model: str, version: int, sha: str) -> None:
    got = requests.post(f"{srv.url}/v1/devices/{device}/reports", headers=bearer(token), timeout=10,
                        json={"state": "committed", "model": model, "version": version, "sha256": sha})
    assert got.status_code == 204, got.text


def test_a_device_downloads_only_what_its_manifest_offered(server: RunningServer, tmp_path: Path) -> None:
    versions = Versions(server, tmp_path, "offered")
    v1, v2 = versions.push(seed=11), versions.push(seed=12)
    mine, other = server.enroll("offer-1"), server.enroll("offer-2")
    versions.roll_out(v1["version"], ["offer-1"])
    assert manifest(server, "offer-1", mine)["artifact"]["sha256"] == v1["sha256"]
    assert download(server, f"/v1/artifacts/{v1['sha256']}", mine).status_code == 200
    for token, sha, who in ((other, v1["sha256"], "offer-2"), (mine, v2["sha256"], "offer-1")):
        refused = download(server, f"/v1/artifacts/{sha}", token)
        assert refused.status_code == 403, refused.text
        assert refused.json()["detail"] == f"artifact {sha[:16]}… was not offered to device {who} by its manifest"
    # v1 is installed; v2 comes as a delta made by the rollout: only that pair, only to this device
    commit(server, "offer-1", mine, "offered", v1["version"], v1["sha256"])
    versions.roll_out(v2["version"], ["offer-1"])
    offered = manifest(server, "offer-1", mine)
    assert offered["artifact"]["sha256"] == v2["sha256"] and offered["delta"]["from_sha256"] == v1["sha256"]
    delta = f"/v1/deltas/{v1['sha256']}/{v2['sha256']}"
    assert download(server, delta, mine).status_code == 200
    assert download(server, f"/v1/artifacts/{v2['sha256']}", mine).status_code == 200  # the fallback too
    assert download(server, delta, other).status_code == 403
    assert download(server, f"/v1/deltas/{v2['sha256']}/{v1['sha256']}", mine).status_code == 403
    assert download(server, f"/v1/artifacts/{v1['sha256']}", mine).status_code == 403  # no longer offered


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose bsdiff children may not have the memory bsdiff would need for these models."""
    running = start_server(tmp_path_factory.mktemp("tight"), overrides={"sandbox": {"delta_memory_mb": 256}})
    try:
        yield running
    finally:
        running.stop()


def test_a_delta_that_is_not_made_is_not_offered_and_never_made_on_request(tight: RunningServer,
                                                                          tmp_path: Path) -> None:
    versions = Versions(tight, tmp_path, "nodelta")
    v1, v2 = versions.push(seed=21), versions.push(seed=22)
    token = tight.enroll("nodelta-1")
    commit(tight, "nodelta-1", token, "nodelta", v1["version"], v1["sha256"])
    versions.roll_out(v2["version"], ["nodelta-1"])
    offered = manifest(tight, "nodelta-1", token)
    assert offered["delta"] is None and offered["artifact"]["sha256"] == v2["sha256"]  # the full artifact only
    started = time.monotonic()
    pair = f"/v1/deltas/{v1['sha256']}/{v2['sha256']}"
    assert download(tight, pair, token).status_code == 403
    assert requests.get(tight.url + pair, headers=tight.admin(), timeout=10).status_code == 404
    assert time.monotonic() - started < 2  # nothing was diffed on the way
    made = requests.post(tight.url + pair, headers=tight.admin(), timeout=10)
    assert made.status_code == 422 and "sandbox.delta_memory_mb (256 MB)" in made.json()["detail"]
    assert download(tight, f"/v1/artifacts/{v2['sha256']}", token).status_code == 200


def stored_files(srv: RunningServer) -> set[Path]:
    return {p for p in (srv.workdir / "artifacts").rglob("*") if p.is_file()}


def sample(index: int, **record: Any) -> dict[str, Any]:
    jpeg = b"\xff\xd8\xff\xe0" + bytes([index]) * 600 + b"\xff\xd9"
    doc = {"id": f"{1_700_000_000_000 + index:013d}-{index:08x}", "ts": 1_700_000_000.0 + index,
           "model": {"name": "m", "version": 1}, "device_class": "x86-cpu", "task": "classification",
           "prediction": {"class": 1}, **record}
    return {"record": doc, "jpeg_b64": base64.b64encode(jpeg).decode()}


def post_samples(srv: RunningServer, device: str, token: str, items: list[dict[str, Any]]) -> requests.Response:
    body = json.dumps({"samples": items}).encode()  # NaN stays NaN on the wire, as a careless device sends it
    return requests.post(f"{srv.url}/v1/devices/{device}/samples", data=body, timeout=10,
                         headers={**bearer(token), "Content-Type": "application/json"})


def ask(srv: RunningServer, device: str, **args: Any) -> dict[str, Any]:
    sent = requests.post(f"{srv.url}/v1/devices/{device}/commands", headers=srv.admin(), timeout=10,
                         json={"type": "upload_samples", "args": args})
    assert sent.status_code == 202, sent.text
    return dict(sent.json())


def test_samples_only_after_the_command_and_within_its_allowance(server: RunningServer) -> None:
    token = server.enroll("samples-1")
    unasked = post_samples(server, "samples-1", token, [sample(1)])
    assert unasked.status_code == 403
    assert unasked.json()["detail"] == "no upload_samples command was sent to device samples-1"
    assert ask(server, "samples-1", limit=3)["args"] == {"limit": 3}
    over = post_samples(server, "samples-1", token, [sample(i) for i in range(4)])
    assert over.status_code == 429 and "may send 3 more" in over.json()["detail"]
    assert post_samples(server, "samples-1", token, [sample(1), sample(2)]).json() == {"stored": 2}
    assert post_samples(server, "samples-1", token, [sample(3), sample(4)]).status_code == 429
    assert post_samples(server, "samples-1", token, [sample(3)]).json() == {"stored": 1}
    assert post_samples(server, "samples-1", token, [sample(5)]).status_code == 429
    assert ask(server, "samples-1")["args"]["limit"] == 500  # no limit given: the per-command quota
    listed = requests.get(f"{server.url}/v1/samples?device_id=samples-1", headers=server.admin(), timeout=10)
    assert len(listed.json()["samples"]) == 3


@pytest.mark.parametrize(("what", "record", "message"), [
    ("dict device_class", {"device_class": {"a": 1}}, "device_class"),
    ("version past int64", {"model": {"name": "m", "version": 2**63}}, "model.version"),
    ("negative version", {"model": {"name": "m", "version": -1}}, "model.version"),
    ("NaN ts", {"ts": float("nan")}, "ts"),
    ("ts far in the future", {"ts": 1e300}, "ts"),
    ("model name an object", {"model": {"name": {"x": 1}, "version": 1}}, "model.name"),
    ("huge record", {"notes": "x" * 20_000}, "record is"),
    ("bad id", {"id": "../../etc/passwd"}, "id"),
])
def test_ill_typed_sample_records_are_a_422_before_any_file_is_stored(server: RunningServer, what: str,
                                                                      record: dict[str, Any],
                                                                      message: str) -> None:
    device = "typed-" + re.sub(r"[^a-z0-9]+", "-", what)
    token = server.enroll(device)
    ask(server, device, limit=10)
    before = stored_files(server)
    got = post_samples(server, device, token, [sample(40), sample(41, **record)])  # the good one first
    assert got.status_code == 422, (what, got.status_code, got.text)
    detail = got.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and message in detail, (what, detail)
    assert stored_files(server) == before  # not even the good sample's JPEG: no orphans
    assert post_samples(server, device, token, [sample(42)]).json() == {"stored": 1}  # the allowance is intact
