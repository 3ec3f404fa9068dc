"""The operator's HTTP client: one method per operator route of docs/http-api.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from agent.errors import EdgefleetError


class ApiError(EdgefleetError):
    """The server refused a request or could not be reached."""


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
            raise ApiError(f"cannot reach {self.url}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            detail = " ".join(detail.split())[:300]
            if response.status_code == 401 and "Authorization" not in self.session.headers:
                detail += " (pass --token or set EDGEFLEET_ADMIN_TOKEN)"
            raise ApiError(f"{method} {path}: HTTP {response.status_code}: {detail}")
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(f"{method} {path}: {self.url} answered with something that is not JSON "
                           f"(is it an edgefleet server?)") from exc

    # models
    def push_model(self, name: str, file: Path, *, labels: Path | None = None, meta: dict[str, Any] | None = None,
                   calibration: Path | None = None) -> Any:
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
            data = {"meta": json.dumps(meta)} if meta else None
            return self.request("POST", f"/v1/models/{name}/versions", files=files, data=data)
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
