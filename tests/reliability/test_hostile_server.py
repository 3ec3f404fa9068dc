"""Hostile clients of the update server: schemathesis over the whole OpenAPI surface, path traversal,
oversized uploads, files that are not models, and who may call what."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.reliability.support import Versions
from tests.support.broker import Mosquitto
from tests.support.models import make_onnx_image_classifier
from tests.support.server import RunningServer, start_server

ST = Path(sys.executable).with_name("st")
FUZZ_S = int(os.environ.get("RELIABILITY_SCHEMATHESIS_S", "25"))
DEVICE_ROUTES = {("GET", "/v1/devices/{device_id}/manifest"), ("POST", "/v1/devices/{device_id}/reports"),
                 ("POST", "/v1/devices/{device_id}/samples")}
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/v1/enroll"), ("GET", "/login"), ("POST", "/login"),
               ("GET", "/logout"), ("GET", "/"), ("GET", "/devices/{device_id}"), ("GET", "/metrics"),
               ("GET", "/v1/trust/roots")}
EITHER_ROUTES = {("GET", "/v1/artifacts/{sha256}"), ("GET", "/v1/deltas/{from_sha256}/{to_sha256}")}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """With a broker: commands are published (MQTT off, they answer the documented 503, which the fuzzer's
    not_a_server_error check counts as a server error once it learns a real device id from the listings)."""
    workdir = tmp_path_factory.mktemp("hostile-srv")
    broker = Mosquitto(workdir).start()
    running = start_server(workdir, mqtt_port=broker.port, overrides={"max_upload_mb": 1})
    try:
        yield running
    finally:
        running.stop()
        broker.stop()


@pytest.fixture(scope="module")
def tokens(srv: RunningServer) -> dict[str, str]:
    return {"a": srv.enroll("dev-a"), "b": srv.enroll("dev-b")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def operations(srv: RunningServer) -> list[tuple[str, str]]:
    paths = requests.get(srv.url + "/openapi.json", timeout=10).json()["paths"]
    return sorted((method.upper(), path) for path, ops in paths.items() for method in ops
                  if method in ("get", "post", "put", "patch", "delete"))


def concrete(path: str) -> str:
    values = {"device_id": "dev-a", "sha256": "0" * 64, "from_sha256": "0" * 64, "to_sha256": "1" * 64,
              "name": "m", "version": "1", "rollout_id": "1", "job_id": "1"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), path)


VALID_BODIES = {"/v1/devices/{device_id}/reports": {"state": "committed", "model": "m", "version": 1},
                "/v1/devices/{device_id}/samples": {"samples": []}}


def call(srv: RunningServer, method: str, path: str, headers: dict[str, str]) -> int:
    """The request with a body that validates, so only the credentials can make it fail."""
    return requests.request(method, srv.url + concrete(path), headers=headers, json=VALID_BODIES.get(path, {}),
                            timeout=10, allow_redirects=False).status_code


def test_authorization_matrix(srv: RunningServer, tokens: dict[str, str]) -> None:
    """Every operator route refuses no token, a bad token and a device token; device routes refuse another
    device's token and the admin token; artifacts need some token."""
    ops = operations(srv)
    operator = [op for op in ops if op not in DEVICE_ROUTES | OPEN_ROUTES | EITHER_ROUTES]
    assert len(operator) >= 15, operator
    refused: list[tuple[str, str, str, int]] = []
    for method, path in operator:
        for who, headers, want in (("none", {}, 401), ("bad", bearer("not-a-token"), 401),
                                   ("device", bearer(tokens["a"]), 403)):
            got = call(srv, method, path, headers)
            if got != want:
                refused.append((method, path, who, got))
    for method, path in sorted(DEVICE_ROUTES & set(ops)):
        for who, headers, want in (("none", {}, 401), ("bad", bearer("x"), 401), ("admin", srv.admin(), 401),
                                   ("device b", bearer(tokens["b"]), 403)):
            got = call(srv, method, path, headers)
            if got != want:
                refused.append((method, path, who, got))
    for method, path in sorted(EITHER_ROUTES):
        for who, headers in (("none", {}), ("bad", bearer("x"))):
            got = call(srv, method, path, headers)
            if got != 401:
                refused.append((method, path, who, got))
    print(f"authorization matrix: {len(operator)} operator routes x 3 callers, "
          f"{len(DEVICE_ROUTES & set(ops))} device routes x 4, {len(EITHER_ROUTES)} artifact routes x 2")
    assert refused == [], "\n".join(map(str, refused))


def test_device_a_cannot_see_or_report_for_device_b(srv: RunningServer, tokens: dict[str, str],
                                                    tmp_path: Path) -> None:
    versions = Versions(srv, tmp_path, "authz")
    v1 = versions.push(seed=0)
    versions.roll_out(v1["version"], ["dev-b"])
    mine = requests.get(f"{srv.url}/v1/devices/dev-b/manifest", headers=bearer(tokens["b"]), timeout=5)
    assert mine.status_code == 200
    theirs = requests.get(f"{srv.url}/v1/devices/dev-b/manifest", headers=bearer(tokens["a"]), timeout=5)
    refused = theirs.json()  # says whose token this is not, nothing else of dev-b; instance echoes the request
    assert theirs.status_code == 403 and refused["instance"] == "/v1/devices/dev-b/manifest"
    assert "dev-b" not in json.dumps({**refused, "instance": None}).replace("device dev-b", "")
    report = {"state": "committed", "model": "authz", "version": 1, "sha256": v1["sha256"]}
    forged = requests.post(f"{srv.url}/v1/devices/dev-b/reports", headers=bearer(tokens["a"]), json=report, timeout=5)
    assert forged.status_code == 403
    rollout = requests.get(f"{srv.url}/v1/rollouts", headers=srv.admin(), timeout=5).json()
    states = [d["state"] for r in rollout["rollouts"] if r["model"] == "authz"
              for d in requests.get(f"{srv.url}/v1/rollouts/{r['id']}", headers=srv.admin(), timeout=5)
              .json()["devices"]]
    assert "committed" not in states  # the forged report changed nothing


@pytest.mark.parametrize("path", [
    "/v1/models/..%2F..%2Fetc%2Fpasswd", "/v1/models/%2e%2e", "/v1/models/..", "/v1/models/.hidden",
    "/v1/models/a%00b", "/v1/models/%C3%A9t%C3%A9", "/v1/models/" + "a" * 200,
    "/v1/artifacts/..%2F..%2Fserver.yaml", "/v1/artifacts/" + "A" * 64, "/v1/artifacts/" + "0" * 63 + "%2F",
    "/v1/deltas/" + "0" * 64 + "/..%2F..%2Fserver.pub", "/v1/devices/..%2Fdev-a/manifest",
    "/v1/models/m/versions/1/../../../../server.yaml",
])
def test_path_traversal_is_refused(srv: RunningServer, path: str) -> None:
    got = requests.get(srv.url + path, headers=srv.admin(), timeout=5)
    assert got.status_code in (404, 422), (path, got.status_code, got.text[:200])
    assert "BEGIN" not in got.text and "admin_token" not in got.text


def stored_files(srv: RunningServer) -> set[Path]:
    return {p for p in srv.workdir.rglob("*") if p.is_file() and p.name != "server.log"
            and not p.name.endswith(("-wal", "-shm", "-journal")) and p.suffix != ".db"}


NOT_MODELS = {
    "empty.onnx": b"",
    "text.onnx": b"hello, I am a model\n" * 50,
    "random.tflite": os.urandom(4096),
    "png.onnx": b"\x89PNG\r\n\x1a\n" + os.urandom(2000),
    "zip.pt": b"PK\x03\x04" + os.urandom(2000),
    "tflite-magic-only.tflite": b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64,
    "html.onnx": b"<html><script>alert(1)</script></html>",
}


@pytest.mark.parametrize("name", sorted(NOT_MODELS))
def test_files_that_are_not_models_are_refused_and_store_nothing(srv: RunningServer, name: str) -> None:
    before = stored_files(srv)
    got = requests.post(f"{srv.url}/v1/models/junk/versions", headers=srv.admin(), timeout=30,
                        files={"file": (name, NOT_MODELS[name])})
    assert got.status_code in (415, 422), (name, got.status_code, got.text)
    assert isinstance(got.json()["detail"], str) and "\n" not in got.json()["detail"]
    assert stored_files(srv) == before


def test_truncated_model_and_hostile_filename(srv: RunningServer, tmp_path: Path) -> None:
    model = make_onnx_image_classifier(tmp_path / "m.onnx", seed=8).read_bytes()
    before = stored_files(srv)
    cut = requests.post(f"{srv.url}/v1/models/cut/versions", headers=srv.admin(), timeout=30,
                        files={"file": ("m.onnx", model[: len(model) // 2])})
    assert cut.status_code == 422 and stored_files(srv) == before
    evil = requests.post(f"{srv.url}/v1/models/evil/versions", headers=srv.admin(), timeout=30,
                         files={"file": ("../../../../tmp/evil-edgefleet.onnx", model)})
    assert evil.status_code == 201
    assert not Path("/tmp/evil-edgefleet.onnx").exists()
    new = stored_files(srv) - before
    assert all(srv.workdir in p.parents for p in new) and all("evil" not in p.name for p in new), new


def test_oversized_uploads_are_refused_and_store_nothing(srv: RunningServer) -> None:
    before = stored_files(srv)
    big = b"\x08\x07" + os.urandom((1 << 20) + 4096)  # over the 1 MB limit of this server
    streamed = requests.post(f"{srv.url}/v1/models/big/versions", headers=srv.admin(), timeout=60,
                             files={"file": ("big.onnx", big)})
    assert streamed.status_code == 413, streamed.text
    lying = requests.post(f"{srv.url}/v1/models/big/versions", timeout=60,
                          headers={**srv.admin(), "Content-Type": "multipart/form-data; boundary=x"},
                          data=(b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.onnx\"\r\n\r\n"
                                + b"\0" * (3 << 20) + b"\r\n--x--\r\n"))
    assert lying.status_code == 413, lying.text
    assert stored_files(srv) == before
    assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200


def test_ids_past_the_database_integer_are_a_422(srv: RunningServer) -> None:
    """Finding S1 (schemathesis): /v1/jobs/{id} and /v1/rollouts/{id}[/pause|/resume|/abort] with an id above
    2**63-1 overflowed SQLite's INTEGER and answered 500."""
    huge = str(2**64)
    for method, path in [("GET", f"/v1/jobs/{huge}"), ("GET", f"/v1/rollouts/{huge}"),
                         ("POST", f"/v1/rollouts/{huge}/pause"), ("POST", f"/v1/rollouts/{huge}/resume"),
                         ("POST", f"/v1/rollouts/{huge}/abort")]:
        got = requests.request(method, srv.url + path, headers=srv.admin(), timeout=5)
        assert got.status_code == 422, (path, got.status_code, got.text)
    assert requests.get(f"{srv.url}/v1/rollouts/{2**63 - 1}", headers=srv.admin(), timeout=5).status_code == 404


def test_samples_version_past_the_database_integer(srv: RunningServer) -> None:
    got = requests.get(f"{srv.url}/v1/samples", params={"version": str(2**64)}, headers=srv.admin(), timeout=5)
    assert got.status_code == 422, got.status_code


def schemathesis(srv: RunningServer, token: str, seconds: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ST), "run", srv.url + "/openapi.json", "--checks", "not_a_server_error",
                           "--max-examples", "25", "--seed", "20260101", "--no-shrink", "--workers", "2",
                           "--max-time", str(seconds), "--request-timeout", "20", "--warnings", "off",
                           "--header", f"Authorization: Bearer {token}", *extra],
                          capture_output=True, text=True, timeout=seconds + 120, cwd=srv.workdir)


def assert_no_server_error(done: subprocess.CompletedProcess[str]) -> None:
    """No 5xx and no dropped connection; schemathesis' own rare internal errors (a hypothesis draw that
    fails inside schemathesis) do not count against the server."""
    assert "Server error" not in done.stdout and "ST101" not in done.stdout, done.stdout[-6000:]
    assert "Network Error" not in done.stdout and "Connection" not in done.stdout, done.stdout[-6000:]
    assert done.returncode == 0 or "Runtime Error" in done.stdout, done.stdout[-6000:]


def _cases(output: str) -> int:
    found = re.search(r"(\d+) generated", output)
    return int(found.group(1)) if found else 0


def test_schemathesis_no_5xx_as_operator(srv: RunningServer, tokens: dict[str, str], tmp_path: Path) -> None:
    Versions(srv, tmp_path, "st-model").push(seed=0)  # something for the operator routes to find
    done = schemathesis(srv, srv.admin_token, FUZZ_S)
    print(f"schemathesis (admin token): {_cases(done.stdout)} cases")
    assert_no_server_error(done)
    assert _cases(done.stdout) > 100
    assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200


def test_schemathesis_no_5xx_as_a_device(srv: RunningServer, tokens: dict[str, str]) -> None:
    done = schemathesis(srv, tokens["a"], max(10, FUZZ_S // 2), "--include-path-regex",
                        "^/v1/(devices|enroll|artifacts|deltas)")
    print(f"schemathesis (device token): {_cases(done.stdout)} cases")
    assert_no_server_error(done)
    assert _cases(done.stdout) > 100
    assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200


def test_schemathesis_no_5xx_on_the_routes_issue_14_changed(srv: RunningServer, tokens: dict[str, str]) -> None:
    """Downloads limited to the manifest's offer, deltas made only by jobs (GET never diffs, POST starts a job),
    samples validated before storing, the upload_samples command: more cases each, as operator and device."""
    routes = "^/v1/(deltas|artifacts|devices/\\{device_id\\}/(samples|commands|manifest|reports)|enroll)"
    for who, token in (("admin", srv.admin_token), ("device", tokens["a"])):
        done = schemathesis(srv, token, max(10, FUZZ_S // 2), "--include-path-regex", routes)
        print(f"schemathesis ({who} token, issue-14 routes): {_cases(done.stdout)} cases")
        assert_no_server_error(done)
        assert _cases(done.stdout) > 50
    assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200


def test_schemathesis_no_5xx_on_the_enrollment_routes(srv: RunningServer, tokens: dict[str, str]) -> None:
    """Issue 14's new and changed routes on their own, so they get a full share of the cases: enrollment (with
    an admin token as the bearer it may present), reset, approve, one-time tokens, the device list filter."""
    done = schemathesis(srv, srv.admin_token, FUZZ_S, "--include-path-regex",
                        r"^/v1/(enroll|devices|devices/\{device_id\}/(reset|approve|enrollment-token))$")
    print(f"schemathesis (enrollment routes): {_cases(done.stdout)} cases")
    assert_no_server_error(done)
    assert _cases(done.stdout) > 50
    # the operator's routes may reset a device the fuzzer found in a listing; a device it did not reset keeps
    # its token, and one it reset enrolls again with the shared token (re-enrolled here for the later tests)
    for name, token in tokens.items():
        got = requests.get(f"{srv.url}/v1/devices/dev-{name}/manifest", headers=bearer(token), timeout=5)
        if got.status_code == 401:
            shown = requests.get(f"{srv.url}/v1/devices/dev-{name}", headers=bearer(srv.admin_token), timeout=5)
            assert shown.json()["enrollment"] == "unenrolled", (name, shown.json())
            tokens[name] = srv.enroll(f"dev-{name}")
            got = requests.get(f"{srv.url}/v1/devices/dev-{name}/manifest", headers=bearer(tokens[name]), timeout=5)
        assert got.status_code in (200, 204), (name, got.status_code)


CONFORMANCE = "status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_answers_are_what_the_document_says(srv: RunningServer, tokens: dict[str, str]) -> None:
    """Every status a fuzzed request gets is documented for its operation, with the documented media type,
    and its body (success model or problem document) validates against the published schema."""
    for who, token in (("admin", srv.admin_token), ("device", tokens["a"])):
        done = schemathesis(srv, token, max(10, FUZZ_S // 2), "--checks", CONFORMANCE)
        print(f"schemathesis conformance ({who} token): {_cases(done.stdout)} cases")
        failures = sorted(set(re.findall(r"ST1\d\d [^\n]*", done.stdout)))
        assert failures == [], "\n".join(failures) + "\n" + done.stdout[-6000:]
        assert done.returncode == 0 or "Runtime Error" in done.stdout, done.stdout[-6000:]
        assert _cases(done.stdout) > 100
