"""The device side of the update server's HTTP API (docs/http-api.md), and the report queue.

Reports are written to ``update/reports/`` first and POSTed in order; a report the server did
not take stays on disk and is retried on the next flush, so a server outage loses none.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edgefleet.agent.errors import Refused, TransportError
from edgefleet.agent.ota.fsutil import atomic_write, read_json
from edgefleet.agent.signing import strict_json
from edgefleet.agent.wire import (
    MANIFEST_MEDIA_TYPE,
    EnrollRequest,
    EnrollResponse,
    SignedManifest,
    SignedRoot,
    UpdateReport,
)

if TYPE_CHECKING:  # http.client (and ssl) is imported by the first call, on the update thread
    from edgefleet.agent.ota.http import Response, Session

MAX_MANIFEST_BYTES = 4 << 20
MAX_ROOTS = 100  # one answer of the chain; the agent asks again from where it got to


@dataclass
class ManifestReply:
    status: int  # 200, 204 (no desired state) or 304 (unchanged)
    signed: SignedManifest | None = None
    etag: str | None = None


class ServerApi:
    def __init__(self, base_url: str, token: str | None, *, timeout_s: float = 30.0,
                 session: Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        if session is None:
            from edgefleet.agent.ota.http import Session

            session = Session()
        self.session = session

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _call(self, method: str, path: str, **kwargs: Any) -> Response:
        try:
            return self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout_s, **kwargs)
        except OSError as exc:
            raise TransportError(f"{method} {path}: {exc}") from exc

    @staticmethod
    def _fail(response: Response, what: str) -> TransportError:
        try:
            body = response.json()
            detail = body.get("detail") if isinstance(body, dict) else body
        except ValueError:
            detail = response.text[:200]
        message = f"{what}: HTTP {response.status_code} {str(detail)[:300]}"
        if response.status_code in (401, 403, 409):
            return Refused(message, response.status_code)
        return TransportError(message)

    def enroll(self, request: EnrollRequest, current_token: str | None = None) -> EnrollResponse:
        """Enroll; an enrolled device presents its ``current_token`` (rotated by the server)."""
        headers = {"Authorization": f"Bearer {current_token}"} if current_token else {}
        response = self._call("POST", "/v1/enroll", json=request.model_dump(mode="json"), headers=headers)
        if response.status_code != 200:
            raise self._fail(response, "enrollment refused")
        try:
            return EnrollResponse.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise TransportError(f"enrollment answer is not an EnrollResponse: {str(exc).splitlines()[0]}") from exc

    def manifest(self, device_id: str, etag: str | None) -> ManifestReply:
        headers = {**self.auth, "Accept": MANIFEST_MEDIA_TYPE}
        if etag:
            headers["If-None-Match"] = etag
        response = self._call("GET", f"/v1/devices/{device_id}/manifest", headers=headers, stream=True)
        if response.status_code in (204, 304):
            return ManifestReply(response.status_code, None, response.headers.get("ETag", etag))
        if response.status_code != 200:
            raise self._fail(response, "manifest")
        body = _capped(response, "manifest")
        return ManifestReply(200, _parse(body, SignedManifest, "manifest"), response.headers.get("ETag"))

    def roots(self, since: int) -> list[SignedRoot]:
        """The server's signed roots newer than version ``since``, ascending (at most MAX_ROOTS)."""
        response = self._call("GET", "/v1/trust/roots", params={"since": since}, stream=True)
        if response.status_code != 200:
            raise self._fail(response, "root of trust")
        try:
            body = strict_json(_capped(response, "root chain"))
        except ValueError as exc:
            raise TransportError(f"root chain is not JSON ({str(exc).splitlines()[0]})") from exc
        items = body.get("roots") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise TransportError("root chain is not {\"roots\": [...]}")
        roots = []
        for item in items[:MAX_ROOTS]:
            try:
                roots.append(SignedRoot.model_validate(item))
            except ValidationError as exc:
                raise TransportError(f"root chain: an entry is not a SignedRoot: {exc.errors()[0]['msg']}") from exc
        return sorted(roots, key=_root_version)

    def report(self, device_id: str, report: UpdateReport) -> None:
        response = self._call("POST", f"/v1/devices/{device_id}/reports", headers=self.auth,
                              json=report.model_dump(mode="json"))
        if response.status_code >= 300:
            raise self._fail(response, "report refused")

    def upload_samples(self, device_id: str, samples: list[dict[str, Any]]) -> None:
        """POST stored input samples (``[{"record", "jpeg_b64"}]``) the operator asked for."""
        response = self._call("POST", f"/v1/devices/{device_id}/samples", headers=self.auth,
                              json={"samples": samples})
        if response.status_code >= 300:
            raise self._fail(response, "samples refused")


def _root_version(root: SignedRoot) -> int:
    version = root.signed.get("version")
    return version if isinstance(version, int) else 0


def _capped(response: Response, what: str, cap: int = MAX_MANIFEST_BYTES) -> bytes:
    """The body of a streamed response, refused past ``cap`` bytes (a man in the middle may send gigabytes)."""
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise TransportError(f"{what} is larger than {cap} bytes")
    chunks: list[bytes] = []
    total = 0
    try:
        for chunk in response.iter_content(64 * 1024):
            total += len(chunk)
            if total > cap:
                raise TransportError(f"{what} is larger than {cap} bytes")
            chunks.append(chunk)
    except OSError as exc:
        raise TransportError(f"{what}: {exc}") from exc
    finally:
        response.close()
    return b"".join(chunks)


def _parse(content: bytes, model: type[SignedManifest], what: str) -> SignedManifest:
    try:
        return model.model_validate(strict_json(content))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise TransportError(f"{what} is not a SignedManifest: {where}: {first['msg']}") from exc
    except ValueError as exc:
        raise TransportError(f"{what} is not a SignedManifest: not JSON ({str(exc).splitlines()[0]})") from exc


class ReportQueue:
    """Durable FIFO of UpdateReports under ``directory`` (one JSON file each, named by time and a counter)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._counter = itertools.count()

    def put(self, report: UpdateReport) -> None:
        name = f"{time.time_ns():020d}-{next(self._counter):06d}.json"
        atomic_write(self.directory / name, report.model_dump_json().encode())

    def pending(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(p for p in self.directory.glob("*.json") if not p.name.startswith("."))

    def flush(self, send: ServerApi, device_id: str) -> int:
        """POST queued reports in order; stops at the first failure. Returns how many were delivered."""
        sent = 0
        for path in self.pending():
            data = read_json(path)
            if data is None:
                path.unlink(missing_ok=True)
                continue
            try:
                report = UpdateReport.model_validate(data)
            except ValidationError:
                path.unlink(missing_ok=True)
                continue
            try:
                send.report(device_id, report)
            except TransportError as exc:
                if "HTTP 4" in str(exc) and "HTTP 401" not in str(exc) and "HTTP 403" not in str(exc):
                    path.unlink(missing_ok=True)  # the server will never take it
                    continue
                break
            path.unlink(missing_ok=True)
            sent += 1
        return sent


def token_file(state_dir: Path) -> Path:
    return state_dir / "device-token"


def load_token(state_dir: Path) -> str | None:
    try:
        token = token_file(state_dir).read_text().strip()
    except OSError:
        return None
    return token or None


def save_token(state_dir: Path, token: str) -> None:
    atomic_write(token_file(state_dir), token.encode(), mode=0o600)
    token_file(state_dir).chmod(0o600)


def describe(report: UpdateReport) -> str:
    return json.dumps(report.model_dump(mode="json"), sort_keys=True)
