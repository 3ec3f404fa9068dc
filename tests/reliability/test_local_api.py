"""Hostile clients of the local inference API (a real ``edgefleet-agent run``), beyond tests/daemon.

Every hostile request gets a 4xx with a one-line error, and a good request right after it is served
with the exact outputs; slow and stalled clients do not keep others from being served.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from tests.reliability.support import DaemonAgent, agent_yaml, api_port, assert_exact_outputs, probe_image
from tests.support.models import make_onnx_image_classifier
from tests.support.net import wait_until


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonAgent]:
    tmp = tmp_path_factory.mktemp("api")
    model = make_onnx_image_classifier(tmp / "classifier.onnx", seed=4)
    config = agent_yaml(tmp / "state", "api-01", server=None, mqtt_port=None, api_port=api_port(),
                        source={"kind": "none"}, api={"max_body_mb": 1.0},
                        model={"path": str(model), "version": 7, "task": "classification"})
    running = DaemonAgent(tmp / "agent", config).start()
    running.wait_serving()
    yield running
    running.stop()


def raw(agent: DaemonAgent, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, object]]:
    """Send raw bytes; return (status, JSON body) of the answer."""
    host, port = agent.config["api"]["listen"].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    try:
        return status, json.loads(body) if body else {}
    except ValueError:
        return status, {"raw": body[:200].decode(errors="replace")}


def post(body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    return (f"POST /v1/infer HTTP/1.0\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}"
            "\r\n").encode() + body


def good_is_served(agent: DaemonAgent) -> None:
    reply = agent.infer()
    assert reply.status_code == 200, reply.text
    assert_exact_outputs(reply.json(), seed=4)


def nested(depth: int) -> bytes:
    return b'{"inputs": {"image": ' + b"[" * depth + b"]" * depth + b"}}"


ONE = probe_image(0).tolist()
HOSTILE = [
    ("non-UTF-8 JSON", post(b'{"inputs": {"image": "\xff\xfe\xfd"}}'), 400),
    ("JSON null", post(b"null"), 400),
    ("JSON string", post(b'"inputs"'), 400),
    ("inputs is null", post(b'{"inputs": null}'), 400),
    ("input is a dict", post(b'{"inputs": {"image": {"a": 1}}}'), 400),
    ("ragged array", post(json.dumps({"inputs": {"image": [[[[1.0, 2.0], [3.0]]]]}}).encode()), 400),
    ("strings of numbers", post(json.dumps({"inputs": {"image": [[["1"] * 32] * 32] * 3}}).encode()), 400),
    # findings A1 (RecursionError answered 500) and A2 (non-finite inputs gave outputs the encoder refused)
    ("nesting 100k deep", post(nested(100_000)), 400),
    ("NaN values", post(json.dumps({"inputs": {"image": np.full((1, 3, 32, 32), np.nan).tolist()}}).encode()), 400),
    ("values past float32", post(json.dumps({"inputs": {"image": np.full((1, 3, 32, 32), 1e39).tolist()}})
                                 .encode()), 400),
    # finding A4: booleans were cast to 0/1 for float inputs
    ("booleans for floats", post(json.dumps({"inputs": {"image": np.full((1, 3, 32, 32), True).tolist()}})
                                 .encode()), 400),
    ("scalar", post(b'{"inputs": {"image": 3.5}}'), 400),
    ("too many dims", post(json.dumps({"inputs": {"image": [ONE]}}).encode()), 400),
    ("empty batch", post(b'{"inputs": {"image": []}}'), 400),
    ("wrong channel count", post(json.dumps({"inputs": {"image": [ONE[0][:2]]}}).encode()), 400),
    ("duplicate input with extra", post(b'{"inputs": {"image": [], "image2": []}}'), 400),
    ("Content-Length negative", b"POST /v1/infer HTTP/1.0\r\nContent-Type: application/json\r\n"
                                b"Content-Length: -5\r\n\r\n{}", 400),
    ("Content-Length garbage", b"POST /v1/infer HTTP/1.0\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 1e3\r\n\r\n{}", 400),
    ("no Content-Length (chunked)", b"POST /v1/infer HTTP/1.1\r\nContent-Type: application/json\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411),
    ("body shorter than Content-Length", b"POST /v1/infer HTTP/1.0\r\nContent-Type: application/json\r\n"
                                         b"Content-Length: 500\r\n\r\n{\"inputs\"", 400),
    ("over the body limit", post(b"[" * (2 << 20)), 413),
    ("huge declared length", b"POST /v1/infer HTTP/1.0\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 99999999999999\r\n\r\n", 413),
    ("image bytes that are not an image", post(bytes(range(256)) * 40, "image/jpeg"), 400),
    ("empty image", post(b"", "image/png"), 400),
    ("content type with junk parameters", post(b"{}", "application/json; charset=\xff"), 400),
    ("unknown method", b"BREW /v1/infer HTTP/1.0\r\n\r\n", 501),
    ("TLS hello on the plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 0),  # closed
    ("path traversal", b"GET /../../etc/passwd HTTP/1.0\r\n\r\n", 404),
    ("very long path", b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n", 414),
    ("header flood", b"GET /v1/health HTTP/1.0\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
]


@pytest.mark.parametrize(("case", "request_bytes", "status"), HOSTILE,
                         ids=[str(getattr(c, "values", c)[0]) for c in HOSTILE])
def test_hostile_request_gets_a_4xx_and_the_next_one_is_served(agent: DaemonAgent, case: str,
                                                               request_bytes: bytes, status: int) -> None:
    got, body = raw(agent, request_bytes)
    assert got == status, (case, got, body)
    if "error" in body:
        assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]
    good_is_served(agent)
    assert agent.alive()


def test_slowloris_clients_do_not_stop_the_service(agent: DaemonAgent) -> None:
    """200 connections that send half a request and stall, plus 20 that trickle a byte a second."""
    host, port = agent.config["api"]["listen"].split(":")
    stalled = []
    for i in range(200):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"POST /v1/infer HTTP/1.0\r\nContent-Type: application/json\r\nContent-Len"
                     if i % 2 else post(json.dumps({"inputs": {"image": ONE}}).encode())[:-100])
        stalled.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        sock = socket.create_connection((host, int(port)), timeout=5)
        try:
            for byte in b"GET /v1/health HTTP/1.0\r\nX-Slow: " + b"x" * 1000:
                if stop.wait(1.0):
                    break
                sock.sendall(bytes([byte]))
        except OSError:
            pass
        finally:
            sock.close()

    tricklers = [threading.Thread(target=trickle, daemon=True) for _ in range(20)]
    for thread in tricklers:
        thread.start()
    try:
        started = time.monotonic()
        for _ in range(20):
            good_is_served(agent)
        assert time.monotonic() - started < 10
        assert requests.get(agent.url + "/v1/health", timeout=5).status_code == 200
    finally:
        stop.set()
        for sock in stalled:
            sock.close()
    good_is_served(agent)
    assert agent.alive()


def test_a_stalled_client_is_disconnected(agent: DaemonAgent) -> None:
    host, port = agent.config["api"]["listen"].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(post(b'{"inputs": {"image": [1, 2, 3]}}')[:-5])
        sock.settimeout(15.0)  # finding A3: without a server-side timeout this waited for ever
        try:
            answer = sock.recv(1024)  # b"" (closed) or an error answer once the server gives up on us
        except TimeoutError:
            answer = None
    assert answer is not None


# --- finding 10: DNS rebinding, other users on the box, header trickling ---------------------------------------

def get_with_host(agent: DaemonAgent, host: str | None, path: str = "/v1/model",
                  token: str | None = None) -> tuple[int, dict[str, object]]:
    lines = [f"GET {path} HTTP/1.0"] + ([f"Host: {host}"] if host is not None else []) + (
        [f"Authorization: Bearer {token}"] if token is not None else [])
    return raw(agent, ("\r\n".join(lines) + "\r\n\r\n").encode())


def test_a_foreign_host_is_refused_with_421(agent: DaemonAgent) -> None:
    """A page on attacker.example whose name rebinds to 127.0.0.1 sends Host: attacker.example:PORT."""
    port = agent.config["api"]["listen"].split(":")[1]
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.attacker.example:{port}",
                 f"localhost.attacker.example:{port}"):
        status, body = get_with_host(agent, host)
        assert status == 421, (host, status, body)
        assert "api.allowed_hosts" in str(body["error"]) and "path" not in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "127.0.0.2", None):
        status, body = get_with_host(agent, host)
        assert status == 200 and "path" in body, (host, status, body)
    good_is_served(agent)


TOKEN = "s3cret-token-of-this-box"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonAgent]:
    tmp = tmp_path_factory.mktemp("guarded")
    model = make_onnx_image_classifier(tmp / "classifier.onnx", seed=4)
    (tmp / "api.token").write_text(TOKEN + "\n")
    config = agent_yaml(tmp / "state", "api-02", server=None, mqtt_port=None, api_port=api_port(),
                        source={"kind": "none"}, model={"path": str(model), "version": 7, "task": "classification"},
                        api={"allowed_hosts": ["edge-box.lan"], "token_file": str(tmp / "api.token"),
                             "header_timeout_s": 1.5, "body_timeout_s": 2.0})
    running = DaemonAgent(tmp / "agent", config).start()

    def up() -> bool:
        try:
            return get_with_host(running, None, "/v1/health", TOKEN)[0] == 200
        except OSError:
            return False

    wait_until(up, timeout=30)
    yield running
    running.stop()


def test_the_token_is_required_when_configured(guarded: DaemonAgent) -> None:
    port = guarded.config["api"]["listen"].split(":")[1]
    for path in ("/v1/model", "/v1/health"):
        assert get_with_host(guarded, f"127.0.0.1:{port}", path)[0] == 401
        assert get_with_host(guarded, f"127.0.0.1:{port}", path, token="wrong")[0] == 401
        assert get_with_host(guarded, f"127.0.0.1:{port}", path, token=TOKEN)[0] == 200
    body = json.dumps({"inputs": {"image": ONE}}).encode()
    refused = requests.post(guarded.url + "/v1/infer", data=body, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"] == "a bearer token is required (api.token)"
    served = requests.post(guarded.url + "/v1/infer", data=body, timeout=10,
                           headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    assert served.status_code == 200
    assert_exact_outputs(served.json(), seed=4)


def test_allowed_hosts_are_served_and_others_refused(guarded: DaemonAgent) -> None:
    assert get_with_host(guarded, "edge-box.lan:8500", token=TOKEN)[0] == 200
    assert get_with_host(guarded, "EDGE-BOX.LAN", token=TOKEN)[0] == 200
    assert get_with_host(guarded, "other-box.lan", token=TOKEN)[0] == 421
    assert get_with_host(guarded, "attacker.example", token="wrong")[0] == 421  # Host is judged first


def test_header_tricklers_are_cut_while_others_are_served(guarded: DaemonAgent) -> None:
    host, port = guarded.config["api"]["listen"].split(":")
    cut_after: list[float] = []

    def trickle() -> None:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            started = time.monotonic()
            try:
                for byte in b"GET /v1/health HTTP/1.0\r\nX-Slow: " + b"x" * 100:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.2)  # every byte well within the 10 s per-read timeout
                while sock.recv(1024):
                    pass
            except OSError:
                pass
            cut_after.append(time.monotonic() - started)

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(10)]
    for thread in threads:
        thread.start()
    for _ in range(5):
        assert get_with_host(guarded, None, "/v1/health", TOKEN)[0] == 200
        time.sleep(0.2)
    for thread in threads:
        thread.join(timeout=30)
    assert len(cut_after) == 10 and all(1.0 <= t <= 5.0 for t in cut_after), cut_after
    assert guarded.alive()
