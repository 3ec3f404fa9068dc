"""An MQTT broker for the demo and the fleet simulator: Mosquitto when installed, else amqtt.

amqtt is a pure-Python broker (MQTT 3.1.1 only), so the demo needs nothing but pip; the
agents fall back from MQTT 5 to 3.1.1 by themselves.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def _wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


@dataclass
class RunningBroker:
    kind: str  # mosquitto | amqtt
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def _mosquitto_command(port: int, workdir: Path, log: Path) -> list[str]:
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"log_dest file {log}\nmax_queued_messages 10000\n"
    )
    return [str(find_mosquitto()), "-c", str(conf)]


def _amqtt_command(port: int, workdir: Path) -> list[str]:
    conf = workdir / "amqtt.yaml"
    conf.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
    )
    amqtt = Path(sys.executable).with_name("amqtt")
    return [str(amqtt), "-c", str(conf)]


def start_broker(port: int, workdir: Path, *, prefer: str = "auto", timeout: float = 15.0) -> RunningBroker:
    """Start a broker on 127.0.0.1:``port``; ``prefer`` is auto, mosquitto or amqtt."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "broker.log"
    use_mosquitto = prefer == "mosquitto" or (prefer == "auto" and find_mosquitto() is not None)
    kind = "mosquitto" if use_mosquitto else "amqtt"
    command = _mosquitto_command(port, workdir, log) if use_mosquitto else _amqtt_command(port, workdir)
    with log.open("ab") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    if not _wait_for_port(port, timeout):
        proc.kill()
        raise RuntimeError(f"{kind} did not start listening on port {port}; see {log}")
    return RunningBroker(kind, port, proc, log)
