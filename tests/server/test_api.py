"""The real server over HTTP: enrollment, auth, registry, signed manifests, downloads, deltas."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import bsdiff4
import numpy as np
import pytest
import requests

from edgefleet.agent.signing import load_public_key, verify_document
from edgefleet.agent.wire import Manifest, SignedManifest
from tests.support.server import RunningServer


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(server: RunningServer, name: str, path: Path, **data: str) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{name}/versions", headers=server.admin(),
                         files={"file": (path.name, path.read_bytes())}, data=data or None, timeout=30)


def rollout_to(server: RunningServer, name: str, version: int, devices: list[str], **extra: object) -> dict:
    body = {"model": name, "version": version, "target": {"device_ids": devices}, "waves": [100],
            "gates": {"soak_s": 0}, **extra}
    response = requests.post(f"{server.url}/v1/rollouts", headers=server.admin(), json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def test_enrollment_and_the_auth_matrix(server: RunningServer) -> None:
    bad = requests.post(server.url + "/v1/enroll", json={"device_id": "x1", "enrollment_token": "nope"}, timeout=5)
    assert bad.status_code == 401 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json() == {"type": "about:blank", "title": "Unauthorized", "status": 401,
                          "detail": "invalid enrollment token", "instance": "/v1/enroll"}
    token_a, token_b = server.enroll("auth-a"), server.enroll("auth-b")
    url = server.url + "/v1/devices/auth-a/manifest"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, headers=bearer("wrong"), timeout=5).status_code == 401
    assert requests.get(url, headers=bearer(token_a), timeout=5).status_code == 204
    other = requests.get(url, headers=bearer(token_b), timeout=5)
    assert other.status_code == 403 and other.json()["detail"] == "this token does not belong to device auth-a"
    assert requests.get(url, headers=server.admin(), timeout=5).status_code == 401  # admin is not the device
    report = {"state": "idle", "model": "m", "version": 1}
    assert requests.post(server.url + "/v1/devices/auth-a/reports", json=report, headers=bearer(token_b),
                         timeout=5).status_code == 403
    operator = requests.get(server.url + "/v1/devices", headers=bearer(token_a), timeout=5)
    assert operator.status_code == 403 and operator.json()["detail"] == "a device token cannot call operator routes"
    assert requests.get(server.url + "/v1/models", headers=bearer(token_a), timeout=5).status_code == 403
    # the shared token alone cannot re-enroll an enrolled id (a takeover); its current token rotates it
    taken = requests.post(server.url + "/v1/enroll", json={"device_id": "auth-a",
                                                           "enrollment_token": server.enrollment_token}, timeout=5)
    assert taken.status_code == 409 and "edgefleet devices reset auth-a" in taken.json()["detail"]
    assert requests.get(url, headers=bearer(token_a), timeout=5).status_code == 204
    new_a = server.enroll("auth-a", current_token=token_a)
    assert requests.get(url, headers=bearer(token_a), timeout=5).status_code == 401
    assert requests.get(url, headers=bearer(new_a), timeout=5).status_code == 204


def test_upload_extracts_the_signature_and_versions_grow(server: RunningServer, onnx_files: tuple[Path, Path]) -> None:
    a, b = onnx_files
    meta = json.dumps({"task": "classification", "preprocess": {"scale": 1 / 255, "layout": "NCHW"}})
    first = upload(server, "up", a, labels="cat\ndog\n\nbird\nfish\n", meta=meta)
    assert first.status_code == 201, first.text
    doc = first.json()
    assert doc["version"] == 1 and doc["format"] == "onnx" and doc["task"] == "classification"
    assert doc["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest() and doc["size"] == a.stat().st_size
    assert doc["inputs"] == [{"name": "image", "shape": [None, 3, 32, 32], "dtype": "float32", "scale": None,
                              "zero_point": None}]
    assert doc["outputs"][0]["name"] == "scores" and doc["outputs"][0]["shape"] == [None, 4]
    assert doc["labels"] == ["cat", "dog", "bird", "fish"]
    assert doc["preprocess"]["layout"] == "NCHW" and abs(doc["preprocess"]["scale"] - 1 / 255) < 1e-12
    assert [(v["name"], v["status"], v["sha256"]) for v in doc["variants"]] == [("reference", "ready", doc["sha256"])]
    assert upload(server, "up", b).json()["version"] == 2
    listing = requests.get(server.url + "/v1/models/up", headers=server.admin(), timeout=5).json()
    assert [v["version"] for v in listing["versions"]] == [1, 2] and listing["latest_version"] == 2


def test_bad_uploads_are_refused_and_store_nothing(server: RunningServer, tmp_path: Path,
                                                   onnx_files: tuple[Path, Path]) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"\x00not a model" * 100)
    refused = upload(server, "bad", junk)
    assert refused.status_code == 422 and refused.json()["detail"].startswith("not a model:")
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\x08" + b"\x00" * (3 * 1024 * 1024))  # over the 1 MB limit of the test server
    assert upload(server, "bad", big).status_code == 413
    bad_meta = upload(server, "bad", onnx_files[0], meta='{"task": "dance"}')
    assert bad_meta.status_code == 422 and bad_meta.json()["detail"].startswith("meta is not valid: task")
    no_file = requests.post(server.url + "/v1/models/bad/versions", headers=server.admin(),
                            files={"labels": ("l.txt", b"a\n")}, timeout=5)
    assert no_file.status_code == 422
    assert requests.get(server.url + "/v1/models/bad", headers=server.admin(), timeout=5).status_code == 404
    leftovers = list((server.workdir / "artifacts" / "tmp").iterdir())
    assert leftovers == []


def test_signed_manifest_etag_304_and_variant_fallback(server: RunningServer, onnx_files: tuple[Path, Path]) -> None:
    token = server.enroll("man-1", device_class="rpi4", hw={"runtimes": ["onnxruntime"]})
    version = upload(server, "man", onnx_files[0], meta='{"runtime": {"threads": 2}}').json()
    rollout_to(server, "man", version["version"], ["man-1"])
    url = server.url + "/v1/devices/man-1/manifest"
    response = requests.get(url, headers=bearer(token), timeout=5)
    assert response.status_code == 200
    signed = SignedManifest.model_validate_json(response.content)
    verify_document(load_public_key(server.public_key_path), signed.manifest, signed.signature)
    manifest = Manifest.model_validate(signed.manifest)
    assert manifest.device_id == "man-1" and manifest.model.name == "man" and manifest.model.version == 1
    assert manifest.artifact.sha256 == version["sha256"] and manifest.artifact.variant == "reference"
    assert manifest.artifact.url == f"{server.url}/v1/artifacts/{version['sha256']}"
    assert manifest.runtime.threads == 2 and manifest.revert is False
    assert abs(manifest.expires_at - manifest.issued_at - 7 * 24 * 3600) < 1e-6
    etag = response.headers["ETag"]
    again = requests.get(url, headers=bearer(token), timeout=5)
    assert again.headers["ETag"] == etag and again.content == response.content  # re-signing is stable
    unchanged = requests.get(url, headers={**bearer(token), "If-None-Match": etag}, timeout=5)
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert requests.get(url, headers={**bearer(token), "If-None-Match": '"other"'}, timeout=5).status_code == 200


def test_artifact_download_with_range_and_if_range(server: RunningServer, onnx_files: tuple[Path, Path]) -> None:
    data = onnx_files[1].read_bytes()
    sha = upload(server, "dl", onnx_files[1]).json()["sha256"]
    token = server.enroll("dl-1")
    url = f"{server.url}/v1/artifacts/{sha}"
    assert requests.get(url, timeout=5).status_code == 401
    unoffered = requests.get(url, headers=bearer(token), timeout=5)  # no manifest has offered it to dl-1 yet
    assert unoffered.status_code == 403 and "not offered to device dl-1" in unoffered.json()["detail"]
    rollout_to(server, "dl", 1, ["dl-1"])
    offered = requests.get(server.url + "/v1/devices/dl-1/manifest", headers=bearer(token), timeout=5)
    assert offered.status_code == 200 and offered.json()["manifest"]["artifact"]["sha256"] == sha
    full = requests.get(url, headers=bearer(token), timeout=5)
    assert full.status_code == 200 and full.content == data
    assert full.headers["ETag"] == f'"{sha}"' and full.headers["Accept-Ranges"] == "bytes"
    part = requests.get(url, headers={**bearer(token), "Range": "bytes=100-"}, timeout=5)
    assert part.status_code == 206 and part.content == data[100:]
    assert part.headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    middle = requests.get(url, headers={**bearer(token), "Range": "bytes=10-19"}, timeout=5)
    assert middle.status_code == 206 and middle.content == data[10:20]
    same = requests.get(url, headers={**bearer(token), "Range": "bytes=5-", "If-Range": f'"{sha}"'}, timeout=5)
    assert same.status_code == 206 and same.content == data[5:]
    changed = requests.get(url, headers={**bearer(token), "Range": "bytes=5-", "If-Range": '"stale"'}, timeout=5)
    assert changed.status_code == 200 and changed.content == data
    beyond = requests.get(url, headers={**bearer(token), "Range": f"bytes={len(data) + 5}-"}, timeout=5)
    assert beyond.status_code == 416
    cached = requests.get(url, headers={**bearer(token), "If-None-Match": f'"{sha}"', "Range": "bytes=5-"}, timeout=5)
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["ETag"] == f'"{sha}"'
    other = requests.get(url, headers={**bearer(token), "If-None-Match": '"stale"'}, timeout=5)
    assert other.status_code == 200 and other.content == data
    unknown = f"{server.url}/v1/artifacts/{'0' * 64}"
    assert requests.get(unknown, headers=bearer(token), timeout=5).status_code == 403  # never says what is stored
    assert requests.get(unknown, headers=server.admin(), timeout=5).status_code == 404


def test_a_delta_is_made_by_a_job_never_on_request(server: RunningServer, onnx_files: tuple[Path, Path]) -> None:
    a, b = onnx_files
    sha_a = upload(server, "delta", a).json()["sha256"]
    sha_b = upload(server, "delta", b).json()["sha256"]
    url = f"{server.url}/v1/deltas/{sha_a}/{sha_b}"
    assert requests.get(url, headers=server.admin(), timeout=30).status_code == 404  # the route never diffs
    token = server.enroll("delta-1")
    committed = requests.post(server.url + "/v1/devices/delta-1/reports", headers=bearer(token), timeout=5,
                              json={"state": "committed", "model": "delta", "version": 1, "sha256": sha_a})
    assert committed.status_code == 204
    rollout_to(server, "delta", 2, ["delta-1"])  # the rollout makes the patch its device will ask for
    manifest = requests.get(server.url + "/v1/devices/delta-1/manifest", headers=bearer(token), timeout=5).json()
    first = requests.get(url, headers=bearer(token), timeout=30)
    assert first.status_code == 200
    assert bsdiff4.patch(a.read_bytes(), first.content) == b.read_bytes()
    patch_sha = hashlib.sha256(first.content).hexdigest()
    assert first.headers["ETag"] == f'"{patch_sha}"'
    second = requests.get(url, headers={**bearer(token), "Range": "bytes=3-"}, timeout=30)
    assert second.status_code == 206 and second.content == first.content[3:]
    assert manifest["manifest"]["delta"] == {"from_sha256": sha_a, "sha256": patch_sha, "size": len(first.content),
                                             "algorithm": "bsdiff4", "url": url}
    # the operator may have any pair diffed, by a job; a device still gets only what its manifest offered
    back = f"{server.url}/v1/deltas/{sha_b}/{sha_a}"
    job = requests.post(back, headers=server.admin(), timeout=10)
    assert job.status_code == 202, job.text
    job_url = f"{server.url}/v1/jobs/{job.json()['id']}"
    deadline = time.monotonic() + 30
    while requests.get(job_url, headers=server.admin(), timeout=5).json()["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert requests.get(job_url, headers=server.admin(), timeout=5).json()["state"] == "succeeded"
    made = requests.get(back, headers=server.admin(), timeout=10)
    assert made.status_code == 200 and bsdiff4.patch(b.read_bytes(), made.content) == a.read_bytes()
    refused = requests.get(back, headers=bearer(token), timeout=10)
    assert refused.status_code == 403 and "not offered to device delta-1" in refused.json()["detail"]


def test_bad_requests_get_4xx_with_a_message(server: RunningServer) -> None:
    admin = server.admin()
    cases = [
        requests.post(server.url + "/v1/rollouts", headers=admin, json={"model": "x"}, timeout=5),
        requests.post(server.url + "/v1/rollouts", headers=admin, timeout=5,
                      json={"model": "nope", "version": 1, "target": {"tags": ["t"]}}),
        requests.get(server.url + "/v1/rollouts/999", headers=admin, timeout=5),
        requests.get(server.url + "/v1/jobs/999", headers=admin, timeout=5),
        requests.post(server.url + "/v1/enroll", json={"device_id": "../etc", "enrollment_token": "x"}, timeout=5),
        requests.get(server.url + "/v1/artifacts/not-a-sha", headers=admin, timeout=5),
        requests.post(server.url + "/v1/models/m/versions", headers=admin, data=b"x", timeout=5),
    ]
    assert [c.status_code for c in cases] == [422, 404, 404, 404, 422, 422, 415]
    assert all(isinstance(c.json()["detail"], str) and c.json()["detail"] for c in cases)
    assert requests.get(server.url + "/openapi.json", timeout=5).json()["paths"]["/v1/rollouts"]


def test_calibration_is_stored_with_the_version(server: RunningServer, onnx_files: tuple[Path, Path]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, image=np.ones((2, 3, 32, 32), np.float32))
    response = requests.post(f"{server.url}/v1/models/cal/versions", headers=server.admin(), timeout=30, files={
        "file": ("a.onnx", onnx_files[0].read_bytes()), "calibration": ("c.npz", buffer.getvalue())})
    assert response.status_code == 201
    assert response.json()["calibration_sha256"] == hashlib.sha256(buffer.getvalue()).hexdigest()
    bad = requests.post(f"{server.url}/v1/models/cal/versions", headers=server.admin(), timeout=30, files={
        "file": ("a.onnx", onnx_files[0].read_bytes()), "calibration": ("c.npz", b"nope")})
    assert bad.status_code == 422
    versions = requests.get(f"{server.url}/v1/models/cal", headers=server.admin(), timeout=5).json()["versions"]
    assert [v["version"] for v in versions] == [1]


@pytest.mark.parametrize(("arrays", "reason"), [
    ({"image": np.ones((3, 32, 32), np.float32)},
     "calibration input 'image' has rank 3, the model wants 4 ([?, 3, 32, 32], sample axis first)"),
    ({"pixels": np.ones((2, 3, 32, 32), np.float32)},
     "calibration inputs ['pixels'] do not match the model's inputs ['image']"),
    ({"image": np.ones((2, 32, 32, 3), np.float32)},
     "calibration input 'image' has shape [2, 32, 32, 3], the model wants [?, 3, 32, 32] (dim 1 must be 3)"),
    ({"image": np.array([[["x"] * 32] * 32] * 3 * 2).reshape(2, 3, 32, 32)},
     "calibration input 'image' is str32, the model takes float32"),
])
def test_calibration_that_cannot_feed_the_model_is_refused_at_push(server: RunningServer, onnx_files: tuple[Path, Path],
                                                                    arrays: dict[str, np.ndarray], reason: str) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    response = requests.post(f"{server.url}/v1/models/badcal/versions", headers=server.admin(), timeout=30, files={
        "file": ("a.onnx", onnx_files[0].read_bytes()), "calibration": ("c.npz", buffer.getvalue())})
    assert (response.status_code, response.json()["detail"]) == (422, reason)
    assert requests.get(f"{server.url}/v1/models/badcal", headers=server.admin(), timeout=5).status_code == 404


def test_the_same_file_twice_is_a_conflict_unless_forced(server: RunningServer, onnx_files: tuple[Path, Path]) -> None:
    def push(path: Path, **data: str) -> requests.Response:
        return requests.post(f"{server.url}/v1/models/twice/versions", headers=server.admin(), timeout=30,
                             files={"file": ("m.onnx", path.read_bytes())}, data=data)

    assert push(onnx_files[0]).status_code == 201
    again = push(onnx_files[0])
    sha = hashlib.sha256(onnx_files[0].read_bytes()).hexdigest()
    assert (again.status_code, again.json()["detail"]) == (
        409, f"model twice version 1 is already this file (sha256 {sha[:12]}); send force=true "
             "(edgefleet model push --force) for a new version anyway")
    assert push(onnx_files[1]).status_code == 201  # another file: version 2
    forced = push(onnx_files[0], force="true")
    assert (forced.status_code, forced.json()["version"]) == (201, 3)
    versions = requests.get(f"{server.url}/v1/models/twice", headers=server.admin(), timeout=5).json()["versions"]
    assert [v["version"] for v in versions] == [1, 2, 3]


def test_readyz_on_sqlite_reports_the_schema_and_every_loop_here(server: RunningServer) -> None:
    ready = requests.get(server.url + "/readyz", timeout=5)
    assert ready.status_code == 200
    doc = ready.json()
    assert doc["ready"] is True and doc["schema"] == "0011" and doc["leads"] == ["gc", "retention", "rollouts"]
    metrics = requests.get(server.url + "/metrics", headers=server.admin(), timeout=5).text
    assert 'edgefleet_lease_held{lease="rollouts"} 1.0' in metrics
