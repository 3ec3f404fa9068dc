"""A real Mosquitto broker on a free port, with an optional ACL and password file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support.net import free_port, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Mosquitto:
    def __init__(self, workdir: Path, *, acl: str | None = None, passwords: dict[str, str] | None = None,
                 extra_conf: str = "", persistence: bool = False) -> None:
        self.workdir = workdir
        self.persistence = persistence  # keep retained messages and sessions across restart()
        self.port = free_port()
        self.acl = acl
        self.passwords = passwords
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    def _write_conf(self) -> Path:
        persist = (["persistence true", f"persistence_location {self.workdir}/"] if self.persistence
                   else ["persistence false"])
        lines = [f"listener {self.port} 127.0.0.1", *persist, f"log_dest file {self.log}",
                 "log_type error", "log_type warning", "log_type notice"]
        if os.geteuid() == 0:  # as root Mosquitto drops to user "mosquitto", which cannot read tmp_path
            lines.append("user root")
        if self.passwords is not None:
            pwfile = self.workdir / "passwd"
            pwfile.write_text("")
            for user, password in self.passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password], check=True)
            pwfile.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            aclfile = self.workdir / "acl"
            aclfile.write_text(self.acl)
            aclfile.chmod(0o600)
            lines.append(f"acl_file {aclfile}")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n" + self.extra_conf)
        return conf

    def start(self) -> Mosquitto:
        conf = self._write_conf()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Start again on the same port (after stop())."""
        self.stop()
        self.start()
