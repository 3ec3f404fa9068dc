"""A real HAProxy in front of server replicas: round robin, health checks on ``/readyz``.

    proxy = HAProxy(tmp_path, [("127.0.0.1", 8081), ("127.0.0.1", 8082)]).start()
    requests.get(proxy.url + "/healthz")
    proxy.server_states()  # {"replica-0": "UP", "replica-1": "DOWN"}
"""

from __future__ import annotations

import csv
import io
import shutil
import signal
import subprocess
from pathlib import Path

import requests

from tests.support.net import free_port, wait_for_port


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).is_file()), None)


def haproxy_reason() -> str | None:
    return None if find_haproxy() else "HAProxy is not installed (apt-get install haproxy)"


def config_text(port: int, stats_port: int, backends: list[tuple[str, str, int]], *, check_ms: int = 500) -> str:
    """The configuration docs/deploying.md shows, with the checks made fast for tests."""
    servers = "\n".join(f"    server {name} {host}:{backend_port} check" for name, host, backend_port in backends)
    return f"""global
    maxconn 4000

defaults
    mode http
    timeout connect 2s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 60s
    option http-keep-alive
    # a request that never reached a replica (refused: it just died) goes to another one
    retries 3
    retry-on conn-failure
    option redispatch

frontend updates
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {check_ms}ms fastinter {check_ms // 2}ms downinter {check_ms}ms fall 2 rise 2
{servers}

frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


class HAProxy:
    def __init__(self, workdir: Path, backends: list[tuple[str, str, int]], *, check_ms: int = 500) -> None:
        """``backends``: (name, host, port) of each replica."""
        self.workdir = workdir / "haproxy"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = self.workdir / "haproxy.cfg"
        self.conf.write_text(config_text(self.port, self.stats_port, backends, check_ms=check_ms))
        self.log = self.workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        binary = find_haproxy()
        if binary is None:
            raise RuntimeError(haproxy_reason())
        check = subprocess.run([binary, "-c", "-f", str(self.conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused the configuration:\n{check.stdout}{check.stderr}")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"haproxy did not start:\n{self.log.read_text(errors='replace')[-2000:]}") from None
        return self

    def server_states(self) -> dict[str, str]:
        """Each replica's state as HAProxy's checks see it (UP, DOWN, ...)."""
        reply = requests.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5)
        rows = csv.DictReader(io.StringIO(reply.text.lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows
                if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
