"""The local inference API of a running daemon: concurrency, images, malformed input, readiness."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from tests.daemon.notify import NotifySocket
from tests.daemon.support import LABELS, AgentProc, base_config, expected_scores, pattern
from tests.support.models import make_onnx_image_classifier, reference_image_classifier


@pytest.fixture
def api_agent(tmp_path: Path):
    model = make_onnx_image_classifier(tmp_path / "classifier.onnx")
    notify = NotifySocket(tmp_path / "notify.sock")
    config = base_config(tmp_path, model, api={"listen": f"127.0.0.1:{_port()}", "max_body_mb": 0.25})
    agent = AgentProc(tmp_path, config, env={"NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "400000"})
    agent.start(wait_ready=False)
    try:
        yield agent, notify
    finally:
        agent.kill()
        notify.close()


def _port() -> int:
    from tests.support.net import free_port

    return free_port()


def _json_body(image: np.ndarray) -> bytes:
    return json.dumps({"inputs": {"image": image.tolist()}}).encode()


def test_ready_watchdog_concurrency_malformed_and_stopping(api_agent) -> None:
    agent, notify = api_agent
    notify.collect("READY=1", timeout=30)
    health = agent.get("/v1/health")  # READY only once the model is loaded: healthy at once
    assert health.status_code == 200 and health.json()["status"] == "ok"
    notify.drain(1.3)
    count = sum(line == "WATCHDOG=1" for line in notify.lines())
    assert count >= 3  # at half of WATCHDOG_USEC=0.4 s

    info = agent.get("/v1/model").json()
    assert info["model"]["name"] == "classifier" and info["model"]["version"] == 3
    assert info["model"]["labels"] == LABELS
    assert info["inputs"][0]["name"] == "image" and info["inputs"][0]["shape"] == [None, 3, 32, 32]
    assert info["runtime"] == "onnxruntime" and info["delegate"] == "CPUExecutionProvider"

    failures: list[str] = []

    def client(worker: int) -> None:
        session = requests.Session()
        rng = np.random.default_rng(worker)
        for i in range(25):
            if i % 2:
                tensor = rng.random((1, 3, 32, 32), dtype=np.float32)
                reply = session.post(agent.url + "/v1/infer", data=_json_body(tensor),
                                     headers={"Content-Type": "application/json"}, timeout=30)
                expected = reference_image_classifier(tensor)[0]
            else:
                image = pattern(worker * 100 + i)
                _ok, png = cv2.imencode(".png", image)
                reply = session.post(agent.url + "/v1/infer", data=png.tobytes(),
                                     headers={"Content-Type": "image/png"}, timeout=30)
                expected = expected_scores(image)
            if reply.status_code != 200:
                failures.append(f"{reply.status_code} {reply.text}")
                continue
            body = reply.json()
            if not np.allclose(body["outputs"]["scores"][0], expected, rtol=1e-5, atol=1e-6):
                failures.append(f"wrong outputs {body['outputs']} vs {expected}")
            best = int(np.argmax(expected))
            if body["top_k"][0]["index"] != best or body["top_k"][0]["label"] != LABELS[best]:
                failures.append(f"wrong top_k {body['top_k']}")
            if body["model"]["version"] != 3 or reply.headers["X-Model-Version"] != "3":
                failures.append(f"wrong model {body['model']}")

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []

    good = _json_body(np.zeros((1, 3, 32, 32), dtype=np.float32))
    cases = [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'{"inputs": [1, 2]}', "application/json", 400, "expected"),
        (b'{"inputs": {"other": [1]}}', "application/json", 400, "unknown input"),
        (json.dumps({"inputs": {"image": [[1.0, 2.0]]}}).encode(), "application/json", 400, "shape"),
        (json.dumps({"inputs": {"image": [["a", "b"]]}}).encode(), "application/json", 400, "float32"),
        (b"\x89PNG but not really", "image/png", 400, "not a decodable image"),
        (b"hello", "text/plain", 415, "Content-Type"),
        (b"x" * 400_000, "application/octet-stream", 413, "over the limit"),
    ]
    for body, content_type, status, text in cases:
        reply = agent.post("/v1/infer", body, content_type)
        assert reply.status_code == status, (body[:40], reply.text)
        error = reply.json()["error"]
        assert text in error and "\n" not in error
        assert reply.json()["model"]["version"] == 3
        assert agent.post("/v1/infer", good, "application/json").status_code == 200  # still served
    assert agent.get("/v1/nothing").status_code == 404
    assert agent.get("/v1/infer").status_code == 405

    code, took = agent.terminate()
    assert code == 0 and took < 5.0
    notify.collect("STOPPING=1", timeout=1)


def test_a_supervisor_that_stops_reading_does_not_stall_the_daemon(tmp_path: Path) -> None:
    """NOTIFY_SOCKET's queue fills when nobody reads it (10 datagrams by default); the watchdog pings
    must not block the main loop then, or SIGTERM is never acted on."""
    model = make_onnx_image_classifier(tmp_path / "classifier.onnx")
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(str(tmp_path / "unread.sock"))
    agent = AgentProc(tmp_path, base_config(tmp_path, model),
                      env={"NOTIFY_SOCKET": str(tmp_path / "unread.sock"), "WATCHDOG_USEC": "100000"})
    try:
        agent.start()  # waits for " ready: " in the log, not on the socket
        time.sleep(2.0)  # 40 pings at 50 ms: the queue has been full for a while
        health = agent.get("/v1/health")
        assert health.status_code == 200
        code, took = agent.terminate()
        assert code == 0 and took < 5.0, agent.log()[-2000:]
    finally:
        agent.kill()
        unread.close()


def test_no_model_start(tmp_path: Path) -> None:
    notify = NotifySocket(abstract=f"edgefleet-test-{tmp_path.name}")
    agent = AgentProc(tmp_path, base_config(tmp_path, None), env={"NOTIFY_SOCKET": notify.env_value})
    try:
        agent.start(wait_ready=False)
        messages = notify.collect("READY=1", timeout=30)
        assert any("no model" in line for m in messages for line in m.split("\n") if line.startswith("STATUS="))
        health = agent.get("/v1/health")
        assert health.status_code == 503 and health.json()["reason"] == "no model loaded yet"
        reply = agent.post("/v1/infer", _json_body(np.zeros((1, 3, 32, 32), dtype=np.float32)), "application/json")
        assert reply.status_code == 503 and "no model" in reply.json()["error"]
        assert agent.get("/v1/model").status_code == 503
        code, took = agent.terminate()
        assert code == 0 and took < 5.0
        notify.collect("STOPPING=1", timeout=1)
    finally:
        agent.kill()
        notify.close()
