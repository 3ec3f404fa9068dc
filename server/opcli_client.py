"""The operator's HTTP client: one method per operator route of docs/http-api.md.

Every failure is an :class:`ApiError` that carries the exit code of its class (docs/operator.md).
"""

from __future__ import annotations

import enum
import errno
import json
from pathlib import Path
from typing import Any

import requests

from edgefleet.agent.errors import EdgefleetError


class ExitCode(enum.IntEnum):
    """``edgefleet``'s exit codes, one per class of failure."""

    OK = 0
    ERROR = 1  # anything else: a failed job, a local file that cannot be read
    USAGE = 2  # bad arguments (argparse), an unreadable --token-file
    NOT_FOUND = 3  # 404: no such model, version, rollout, device or job
    AUTH = 4  # 401/403: no token, a wrong token, or a token without the right
    CONFLICT = 5  # 409: the same file again, a rollout in a state that forbids the action
    INVALID = 6  # 400/413/415/422: the server understood the request and refused it
    UNREACHABLE = 7  # connection refused, unknown host, timeout, TLS failure
    SERVER = 8  # 5xx, or an answer that is not an edgefleet server's
    INTERRUPTED = 130


def exit_code_for(status: int) -> ExitCode:
    if status == 404:
        return ExitCode.NOT_FOUND
    if status in (401, 403):
        return ExitCode.AUTH
    if status == 409:
        return ExitCode.CONFLICT
    if status >= 500:
        return ExitCode.SERVER
    if 400 <= status < 500:
        return ExitCode.INVALID
    return ExitCode.ERROR


class ApiError(EdgefleetError):
    """The server refused a request or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def transport_reason(exc: requests.RequestException) -> str:
    """``connection refused``, ``timed out``, ``unknown host``: the root cause, not urllib3's chain."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed"
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, OSError) and cause.errno is not None:
            if cause.errno == errno.ECONNREFUSED:
                return "connection refused"
            return (cause.strerror or str(cause)).lower()
        text = str(cause)
        if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
            return "unknown host"
        if "Connection refused" in text:
            return "connection refused"
        cause = cause.__cause__ or cause.__context__ or (cause.args[0] if cause.args and
                                                          isinstance(cause.args[0], BaseException) else None)
        seen += 1
    return exc.__class__.__name__


class ServerClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ApiError(f"cannot reach {self.url}: {transport_reason(exc)}", code=ExitCode.UNREACHABLE) from exc
        if response.status_code >= 400:
            try:
                body = response.json()
                detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
            except ValueError:
                detail = response.text
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            detail = " ".join(detail.split())[:300]
            if response.status_code == 401 and "Authorization" not in self.session.headers:
                detail += " (set EDGEFLEET_ADMIN_TOKEN or pass --token-file)"
            raise ApiError(f"{method} {path}: HTTP {response.status_code}: {detail}", status=response.status_code,
                           code=exit_code_for(response.status_code))
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(f"{method} {path}: {self.url} answered with something that is not JSON "
                           f"(is it an edgefleet server?)", code=ExitCode.SERVER) from exc

    # models
    def push_model(self, name: str, file: Path, *, labels: Path | None = None, meta: dict[str, Any] | None = None,
                   calibration: Path | None = None, force: bool = False) -> Any:
        files: dict[str, Any] = {}
        handles = []
        try:
            handle = file.open("rb")
            handles.append(handle)
            files["file"] = (file.name, handle, "application/octet-stream")
            if labels is not None:
                files["labels"] = (labels.name, labels.read_bytes(), "text/plain")
            if calibration is not None:
                cal = calibration.open("rb")
                handles.append(cal)
                files["calibration"] = (calibration.name, cal, "application/octet-stream")
            data: dict[str, str] = {"meta": json.dumps(meta)} if meta else {}
            if force:
                data["force"] = "true"
            return self.request("POST", f"/v1/models/{name}/versions", files=files, data=data or None)
        except OSError as exc:
            raise ApiError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        finally:
            for handle in handles:
                handle.close()

    def models(self) -> Any:
        return self.request("GET", "/v1/models")

    def model(self, name: str) -> Any:
        return self.request("GET", f"/v1/models/{name}")

    def version(self, name: str, version: int) -> Any:
        return self.request("GET", f"/v1/models/{name}/versions/{version}")

    def optimize(self, name: str, version: int, target: str) -> Any:
        return self.request("POST", f"/v1/models/{name}/versions/{version}/variants", json={"target": target})

    def variants(self, name: str, version: int) -> Any:
        return self.request("GET", f"/v1/models/{name}/versions/{version}/variants")

    def job(self, job_id: int | str) -> Any:
        return self.request("GET", f"/v1/jobs/{job_id}")

    # rollouts
    def create_rollout(self, body: dict[str, Any]) -> Any:
        return self.request("POST", "/v1/rollouts", json=body)

    def rollouts(self) -> Any:
        return self.request("GET", "/v1/rollouts")

    def rollout(self, rollout_id: int) -> Any:
        return self.request("GET", f"/v1/rollouts/{rollout_id}")

    def rollout_action(self, rollout_id: int, action: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", f"/v1/rollouts/{rollout_id}/{action}", json=body or {})

    # devices
    def drift(self, name: str, version: int) -> Any:
        return self.request("GET", f"/v1/models/{name}/versions/{version}/drift")

    def accuracy(self, model: str | None) -> Any:
        return self.request("GET", "/v1/quality/accuracy", params={"model": model} if model else None)

    def devices(self, enrollment: str | None = None) -> Any:
        return self.request("GET", "/v1/devices", params={"enrollment": enrollment} if enrollment else None)

    def device_reset(self, device_id: str) -> Any:
        return self.request("POST", f"/v1/devices/{device_id}/reset")

    def device_approve(self, device_id: str) -> Any:
        return self.request("POST", f"/v1/devices/{device_id}/approve")

    def enrollment_token(self, device_id: str, ttl_h: float | None) -> Any:
        return self.request("POST", f"/v1/devices/{device_id}/enrollment-token",
                            json={"ttl_h": ttl_h} if ttl_h is not None else None)

    def device(self, device_id: str) -> Any:
        return self.request("GET", f"/v1/devices/{device_id}")

    def telemetry(self, device_id: str, limit: int) -> Any:
        return self.request("GET", f"/v1/devices/{device_id}/telemetry", params={"limit": limit})

    def events(self, device_id: str, limit: int) -> Any:
        return self.request("GET", f"/v1/devices/{device_id}/events", params={"limit": limit})

    def command(self, device_id: str, command_type: str, args: dict[str, Any]) -> Any:
        return self.request("POST", f"/v1/devices/{device_id}/commands", json={"type": command_type, "args": args})
