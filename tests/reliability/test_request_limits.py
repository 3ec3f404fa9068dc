"""Issue 14, the request half: no anonymous client can spend the server's memory, connections or time.

Against the real ``edgefleet-server run`` on a local port: 100 MB bodies without credentials, with and
without Content-Length, to the unauthenticated and the device routes leave its peak RSS (VmHWM) within
+64 MB and get a 413 problem document; JSON nested past the bound is a 400; clients that trickle their
headers or their body, or that connect and send nothing, are cut in bounded time while others are served;
past the connection cap new requests get a 503 and the server recovers once the holders are cut.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from edgefleet.server.limits import BODY_LIMITS, UPLOAD_ROUTE
from tests.support.server import RunningServer, start_server

MB = 1024 * 1024
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
ROUTES = ["/v1/enroll", "/login", "/v1/devices/lim-1/reports", "/v1/devices/lim-1/samples"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("limits"), overrides={"http": {
        "header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S, "max_connections": 64}})
    try:
        yield running
    finally:
        running.stop()


def vm_hwm_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert found is not None
    return int(found.group(1)) / 1024


def port_of(srv: RunningServer) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def read_answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def status_and_problem(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


def send_huge(srv: RunningServer, path: str, size: int, *, chunked: bool) -> tuple[int, dict[str, object]]:
    """A client that sends ``size`` bytes of JSON body without credentials, as fast as the server takes them,
    while it reads the answer."""
    sock = socket.create_connection(("127.0.0.1", port_of(srv)), timeout=30)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\n"
                 "\r\n".encode())
    block = b"[" + b"1," * (MB // 2 - 1) + b"1]"

    def pour() -> None:
        sent = 0
        try:
            while sent < size:
                data = block if not chunked else f"{len(block):x}\r\n".encode() + block + b"\r\n"
                sock.sendall(data)
                sent += len(block)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: the rest is never read

    sender = threading.Thread(target=pour, daemon=True)
    sender.start()
    answer = read_answer(sock, timeout=30)
    sender.join(timeout=30)
    sock.close()
    return status_and_problem(answer)


def test_the_limit_table_names_real_routes(srv: RunningServer) -> None:
    """A typo in the table would leave a route on the default limit: every entry must be a route that exists."""
    for method, template in [*BODY_LIMITS, UPLOAD_ROUTE]:
        path = re.sub(r"\{\w+\}", "x", template)
        got = requests.request(method, srv.url + path, headers=srv.admin(), timeout=10)
        assert got.status_code not in (404, 405) or ("detail" in got.json() and "Not Found" not in got.text), \
            (method, template, got.status_code, got.text)


def test_100_mb_unauthenticated_bodies_cost_the_server_no_memory(srv: RunningServer) -> None:
    """Finding 4: a 100 MB JSON body with a wrong token raised the server's peak memory by 2.6 GB."""
    for path in ROUTES:  # warm every route up (imports, first parses) before the baseline
        requests.post(srv.url + path, json={"x": 1}, timeout=10)
    before = vm_hwm_mb(srv.proc.pid)
    answers: dict[tuple[str, bool], tuple[int, dict[str, object]]] = {}

    def one(path: str, chunked: bool) -> None:
        answers[(path, chunked)] = send_huge(srv, path, 100 * MB, chunked=chunked)

    threads = [threading.Thread(target=one, args=(path, chunked)) for path in ROUTES for chunked in (False, True)]
    for thread in threads:  # all eight at once
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    grown = vm_hwm_mb(srv.proc.pid) - before
    print(f"peak RSS grew {grown:.1f} MB for {len(threads)} concurrent 100 MB bodies")
    assert len(answers) == len(threads)
    for (path, chunked), (status, problem) in answers.items():
        assert status == 413, (path, chunked, status, problem)
        assert problem["status"] == 413 and "larger than the limit" in str(problem["detail"])
        assert "\n" not in str(problem["detail"])
    assert grown < 64, f"peak RSS grew {grown:.1f} MB"
    assert requests.get(srv.url + "/healthz", timeout=5).status_code == 200


def test_small_unauthenticated_routes_take_a_few_kb(srv: RunningServer) -> None:
    enroll = requests.post(srv.url + "/v1/enroll", timeout=10, json={
        "device_id": "x", "enrollment_token": "x", "hw": {"pad": "x" * 9000}})
    assert enroll.status_code == 413 and enroll.headers["Content-Type"] == "application/problem+json"
    login = requests.post(srv.url + "/login", data={"token": "x" * 5000}, timeout=10)
    assert login.status_code == 413
    fine = requests.post(srv.url + "/v1/enroll", json={"device_id": "x", "enrollment_token": "nope"}, timeout=10)
    assert fine.status_code == 401  # under the limit the route answers as before


def test_json_nested_past_the_bound_is_a_400(srv: RunningServer) -> None:
    deep = b'{"device_id": "x", "enrollment_token": "x", "hw": ' + b"[" * 40 + b"]" * 40 + b"}"
    got = requests.post(srv.url + "/v1/enroll", data=deep, headers={"Content-Type": "application/json"}, timeout=10)
    assert got.status_code == 400 and got.json()["detail"] == "JSON body is nested deeper than 32 levels"
    quoted = b'{"device_id": "x", "enrollment_token": "' + b"[" * 100 + b'"}'  # brackets in a string do not count
    assert requests.post(srv.url + "/v1/enroll", data=quoted, headers={"Content-Type": "application/json"},
                         timeout=10).status_code == 401


def healthz_ms(srv: RunningServer) -> float:
    started = time.perf_counter()
    assert requests.get(srv.url + "/healthz", timeout=10).status_code == 200
    return (time.perf_counter() - started) * 1000


def test_header_tricklers_and_silent_connections_are_cut_while_others_are_served(srv: RunningServer) -> None:
    """Finding 10 (server side): uvicorn kept connections that trickle header bytes open indefinitely."""
    cut_after: list[float] = []
    lock = threading.Lock()

    def trickle(silent: bool) -> None:
        sock = socket.create_connection(("127.0.0.1", port_of(srv)), timeout=30)
        started = time.monotonic()
        try:
            if not silent:
                for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 200:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.25)
            else:
                sock.recv(1)  # returns b"" once the server closes
        except OSError:
            pass
        finally:
            if not silent:
                read_answer(sock, timeout=5)
            with lock:
                cut_after.append(time.monotonic() - started)
            sock.close()

    threads = [threading.Thread(target=trickle, args=(i % 3 == 0,), daemon=True) for i in range(30)]
    for thread in threads:
        thread.start()
    served = [healthz_ms(srv) for _ in range(10) if not time.sleep(0.2)]
    for thread in threads:
        thread.join(timeout=30)
    print(f"30 slow clients cut after {min(cut_after):.1f}-{max(cut_after):.1f}s; healthz meanwhile "
          f"max {max(served):.0f} ms")
    assert len(cut_after) == 30
    assert all(HEADER_TIMEOUT_S - 0.5 <= t <= HEADER_TIMEOUT_S + 5 for t in cut_after), cut_after
    assert max(served) < 1000


def test_the_header_timeout_answers_408(srv: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", port_of(srv)), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
    status, problem = status_and_problem(read_answer(sock))
    sock.close()
    assert status == 408 and "did not arrive within" in str(problem["detail"])


def test_oversized_headers_are_a_431(srv: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", port_of(srv)), timeout=10)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"y" * (70 * 1024) + b"\r\n\r\n")
    except OSError:
        pass
    status, problem = status_and_problem(read_answer(sock))
    sock.close()
    assert status == 431 and "larger than" in str(problem["detail"])
    assert healthz_ms(srv) < 1000


def test_a_trickled_body_is_cut_with_a_408(srv: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", port_of(srv)), timeout=30)
    body = json.dumps({"device_id": "slow", "enrollment_token": "x"}).encode()
    sock.sendall(b"POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    started = time.monotonic()
    try:
        for byte in body:
            sock.sendall(bytes([byte]))
            time.sleep(0.5)
            if time.monotonic() - started > BODY_TIMEOUT_S + 5:
                break
    except OSError:
        pass
    status, problem = status_and_problem(read_answer(sock))
    sock.close()
    assert status == 408 and "body did not arrive" in str(problem["detail"])
    assert time.monotonic() - started < BODY_TIMEOUT_S + 5


def test_past_the_connection_cap_new_requests_get_503_until_the_holders_are_cut(tmp_path: Path) -> None:
    srv = start_server(tmp_path, overrides={"http": {"max_connections": 8, "header_timeout_s": 3.0}})
    try:
        holders = [socket.create_connection(("127.0.0.1", port_of(srv)), timeout=10) for _ in range(8)]
        time.sleep(0.3)
        full = requests.get(srv.url + "/healthz", timeout=10)
        assert full.status_code == 503
        time.sleep(3.5)  # the silent holders are cut by the header timeout
        assert requests.get(srv.url + "/healthz", timeout=10).status_code == 200
        for sock in holders:
            assert sock.recv(1024).startswith(b"HTTP/1.1 408")
            sock.close()
    finally:
        srv.stop()


def test_metrics_count_refusals_and_cut_connections(srv: RunningServer) -> None:
    """After the tests above on this server: the refusals and cuts are on /metrics for the operator."""
    text = requests.get(srv.url + "/metrics", headers=srv.admin(), timeout=10).text

    def sample(name: str, label: str) -> float:
        found = re.search(rf"^{name}\{{{label}\}} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    assert sample("edgefleet_http_refused_total", 'status="413"') >= 8  # the eight 100 MB bodies at least
    assert sample("edgefleet_http_refused_total", 'status="400"') >= 1
    assert sample("edgefleet_http_connections_cut_total", 'reason="timeout"') >= 30
    assert sample("edgefleet_http_connections_cut_total", 'reason="too_large"') >= 1
