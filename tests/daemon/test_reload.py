"""SIGHUP re-reads the config: live changes apply, restart-only ones are logged, a bad file is refused."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.daemon.support import AgentProc, base_config, read_results
from tests.support.models import make_onnx_image_classifier
from tests.support.net import free_port, wait_until


def test_sighup_reload(tmp_path: Path) -> None:
    model = make_onnx_image_classifier(tmp_path / "classifier.onnx")
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    config = base_config(tmp_path, model, source={"kind": "synthetic", "uri": "64x48", "fps": 30},
                         results={"file": str(first)}, log_level="INFO")
    agent = AgentProc(tmp_path, config).start()
    try:
        wait_until(lambda: len(read_results(first)) >= 5, timeout=15)
        assert agent.get("/v1/model").json()["model"]["version"] == 3

        changed = {**config, "results": {"file": str(second)}, "log_level": "DEBUG",
                   "model": {**config["model"], "version": 4},
                   "api": {"listen": f"127.0.0.1:{free_port()}"}}
        agent.write_config(changed)
        agent.signal(signal.SIGHUP)
        wait_until(lambda: "config reloaded" in agent.log(), timeout=10)
        line = next(x for x in agent.log().splitlines() if "config reloaded" in x)
        assert "'results'" in line and "'log_level'" in line and "'model'" in line
        assert "needs a restart: ['api']" in line
        # the new results file gets frames from the old model until the new one is loaded, then only from it
        wait_until(lambda: [r["model"]["version"] for r in read_results(second)][-3:] == [4, 4, 4], timeout=15)
        versions = [r["model"]["version"] for r in read_results(second)]
        assert versions == sorted(versions) and set(versions) <= {3, 4}  # swapped live, and for good
        assert agent.get("/v1/model").json()["model"]["version"] == 4

        agent.write_config({**changed, "source": {"kind": "synthetic", "fps": -1}})
        agent.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in agent.log(), timeout=10)
        assert "source.fps" in agent.log()
        count = len(read_results(second))
        wait_until(lambda: len(read_results(second)) > count + 3, timeout=10)  # still running the old config
        assert agent.get("/v1/health").status_code == 200
        code, took = agent.terminate()
        assert code == 0 and took < 5.0
    finally:
        agent.kill()
