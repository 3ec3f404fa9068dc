"""The local inference API on ``api.listen``, with the standard library only.

    POST /v1/infer   image/* or application/octet-stream: an encoded image, pre-processed (needs
                     OpenCV: without it, 415 naming the extra to install)
                     application/json: {"inputs": {name: nested list}}, cast to the input dtype
                     → {"outputs", "top_k" (classifiers), "model": {name, version, sha256}, "latency_ms"}
    GET  /v1/health  200 {"status": "ok"} / 503 {"status": "unhealthy", "reason"}
    GET  /v1/model   meta, signature, runtime, delegate

Every error is a 4xx/5xx with ``{"error": "<one line>"}``; every response names the model
version that served it (``model`` in the body, ``X-Model-Version`` header). Who may call it (Host, token)
and how long a client may take are the guard's (agent/daemon/apiguard.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from edgefleet.agent.daemon.apiguard import ApiGuard
from edgefleet.agent.daemon.host import ModelHost, NoModelError
from edgefleet.agent.daemon.loop import Pipelines, model_ref
from edgefleet.agent.daemon.preprocess import Postprocessor
from edgefleet.agent.errors import InvalidInputError, ListenError
from edgefleet.agent.opencv import OpenCVMissing, load_cv2
from edgefleet.agent.runtime.base import Model
from edgefleet.agent.wire import ModelMeta, TensorSpec

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ApiContext:
    host: ModelHost
    pipelines: Pipelines
    health: Callable[[], tuple[bool, str]]
    max_body_bytes: int
    # drift and samples, as for the loop's frames: ``observe(image or None, outputs, meta)``, never raises
    observe: Callable[[np.ndarray | None, dict[str, np.ndarray], ModelMeta], None] | None = None
    guard: ApiGuard | None = None  # Host and token checks, deadlines, connection cap


def parse_listen(listen: str) -> tuple[str, int]:
    host, _sep, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def json_feeds(body: bytes, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ApiError(400, "body is not valid JSON: nested too deeply") from exc
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), dict):
        raise ApiError(400, 'expected {"inputs": {name: nested list}}')
    given: dict[str, Any] = document["inputs"]
    by_name = {spec.name: spec for spec in specs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise ApiError(400, f"unknown input(s) {unknown}; the model takes {sorted(by_name)}")
    missing = sorted(set(by_name) - set(given))
    if missing:
        raise ApiError(400, f"missing input(s) {missing}")
    feeds = {}
    for name, value in given.items():
        spec = by_name[name]
        try:
            given_array = np.asarray(value)
            if given_array.dtype == np.bool_ and spec.dtype != "bool":
                raise TypeError("true/false given for numbers")
            with np.errstate(over="ignore", invalid="ignore"):
                array = given_array.astype(np.dtype(spec.dtype))
        except (ValueError, TypeError, OverflowError) as exc:
            raise ApiError(400, f"input '{name}' is not a {spec.dtype} array: {exc}") from exc
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ApiError(400, f"input '{name}' has values that are NaN, infinite or beyond {spec.dtype}")
        shape_ok = array.ndim == len(spec.shape) and all(
            want is None or want == got for want, got in zip(spec.shape, array.shape, strict=True))
        if not shape_ok:
            wanted = ["?" if d is None else d for d in spec.shape]
            raise ApiError(400, f"input '{name}' has shape {list(array.shape)}; the model wants {wanted}")
        feeds[name] = array
    return feeds


def image_feeds(body: bytes, model: Model, meta: ModelMeta,
                pipelines: Pipelines) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The model's feeds from an encoded image, and the decoded image (BGR, as a source's frame)."""
    try:
        cv2 = load_cv2("an image request")
    except OpenCVMissing as exc:
        raise ApiError(415, f"{exc}; or send application/json") from exc
    pipeline = pipelines.get(model, meta)
    if pipeline.pre is None:
        raise ApiError(415, f"this model does not take images ({pipeline.error}); send application/json")
    image = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_COLOR) if body else None
    if image is None:
        raise ApiError(400, "body is not a decodable image")
    feeds = pipeline.pre(image)
    others = [spec.name for spec in model.inputs if spec.name != pipeline.pre.name]
    if others:
        raise ApiError(415, f"the model also needs inputs {others}; send application/json")
    return feeds, image


def model_document(host: ModelHost) -> dict[str, Any]:
    serving = host.serving()
    if serving is None:
        raise ApiError(503, "no model is loaded; waiting for the update server")
    model, meta = serving
    return {"model": meta.model_dump(mode="json"),
            "inputs": [spec.model_dump(mode="json") for spec in model.inputs],
            "outputs": [spec.model_dump(mode="json") for spec in model.outputs],
            "runtime": model.runtime, "delegate": model.delegate, "path": str(model.path)}


class Handler(BaseHTTPRequestHandler):
    server: ApiServer
    server_version = "edgefleet-agent"
    protocol_version = "HTTP/1.0"
    timeout = 10.0  # a client that stalls mid-request loses its connection instead of holding a thread

    def setup(self) -> None:
        super().setup()
        guard = self.server.context.guard
        if guard is not None:  # the request line and headers must come within header_timeout_s
            guard.deadlines.arm(self.connection, guard.header_timeout_s)

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if self.server.context.guard is not None:
            self.server.context.guard.deadlines.disarm(self.connection)
        return parsed

    def finish(self) -> None:
        if self.server.context.guard is not None:
            self.server.context.guard.deadlines.disarm(self.connection)
        super().finish()

    def _refused(self) -> bool:
        """Answer a request from a foreign Host (421) or without the token (401); True when it was refused."""
        guard = self.server.context.guard
        if guard is None:
            return False
        reason = guard.host_refusal(self.headers.get("Host"))
        if reason is not None:
            self._error(421, reason)
            return True
        reason = guard.token_refusal(self.headers.get("Authorization"))
        if reason is not None:
            self._error(401, reason)
            return True
        return False

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api %s: " + format, self.client_address[0], *args)

    def _send(self, status: int, document: dict[str, Any]) -> None:
        meta = document.get("model") if isinstance(document.get("model"), dict) else None
        body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        version = meta.get("version") if meta else None
        if version is not None:
            self.send_header("X-Model-Version", str(version))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self.close_connection = True
        self._send(status, {"error": message.splitlines()[0] if message else "error",
                            "model": model_ref(self.server.context.host.meta)})

    def _guarded(self, action: Callable[[], tuple[int, dict[str, Any]]]) -> None:
        if not self.server.enter():
            self._error(503, "the agent is shutting down")
            return
        try:
            status, document = action()
            self._send(status, document)
        except ApiError as exc:
            self._error(exc.status, str(exc))
        except NoModelError:
            self._error(503, "no model is loaded; waiting for the update server")
        except InvalidInputError as exc:
            self._error(400, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:
            log.exception("api request failed")
            self._error(500, f"inference failed: {type(exc).__name__}: {exc}")
        finally:
            self.server.leave()

    def do_GET(self) -> None:
        if self._refused():
            return
        if self.path == "/v1/health":
            self._guarded(self._health)
        elif self.path == "/v1/model":
            self._guarded(lambda: (200, model_document(self.server.context.host)))
        elif self.path == "/v1/infer":
            self._error(405, "use POST for /v1/infer")
        else:
            self._error(404, f"no such endpoint: GET {self.path}")

    def do_POST(self) -> None:
        if self._refused():
            return
        if self.path == "/v1/infer":
            self._guarded(self._infer)
        elif self.path in ("/v1/health", "/v1/model"):
            self._error(405, f"use GET for {self.path}")
        else:
            self._error(404, f"no such endpoint: POST {self.path}")

    def _health(self) -> tuple[int, dict[str, Any]]:
        ok, reason = self.server.context.health()
        document: dict[str, Any] = {"status": "ok" if ok else "unhealthy", "model": model_ref(
            self.server.context.host.meta)}
        if not ok:
            document["reason"] = reason
        return (200 if ok else 503), document

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "Content-Length is required")
        if not length.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        size = int(length)
        if size > self.server.context.max_body_bytes:
            self._discard(size)
            raise ApiError(413, f"body of {size} bytes is over the limit of "
                                f"{self.server.context.max_body_bytes} bytes (api.max_body_mb)")
        guard = self.server.context.guard
        if guard is not None:
            guard.deadlines.arm(self.connection, guard.body_timeout_s)
        try:
            body = self.rfile.read(size)
        finally:
            if guard is not None:
                guard.deadlines.disarm(self.connection)
        if len(body) != size:
            raise ApiError(400, "body shorter than Content-Length")
        return body

    def _discard(self, size: int, limit: int = 8 << 20) -> None:
        """Read (a bounded part of) a refused body, so the client can see the answer instead of a reset."""
        left = min(size, limit)
        self.connection.settimeout(2.0)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _infer(self) -> tuple[int, dict[str, Any]]:
        context = self.server.context
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        is_json = content_type == "application/json"
        if not is_json and not (content_type.startswith("image/") or content_type == "application/octet-stream"):
            raise ApiError(415, "Content-Type must be application/json, image/* or application/octet-stream")
        body = self._read_body()

        images: list[np.ndarray] = []

        def prepare(model: Model, meta: ModelMeta) -> dict[str, np.ndarray]:
            if is_json:
                return json_feeds(body, list(model.inputs))
            feeds, image = image_feeds(body, model, meta, context.pipelines)
            images[:] = [image]
            return feeds

        start = time.perf_counter()
        outputs, meta, model = context.host.infer_with(prepare)
        latency = time.perf_counter() - start
        if context.observe is not None:
            context.observe(images[0] if images else None, outputs, meta)
        document: dict[str, Any] = {"outputs": Postprocessor.as_lists(outputs)}
        top = context.pipelines.get(model, meta).post.top_k(outputs)
        if top:
            document["top_k"] = top
        document["model"] = model_ref(meta)
        document["latency_ms"] = round(latency * 1000, 3)
        return 200, document


_BUSY_BODY = b'{"error":"too many connections to the local API (api.max_connections)"}'
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, listen: str, context: ApiContext) -> None:
        self.context = context
        self._active = 0
        self._closing = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        try:
            super().__init__(parse_listen(listen), Handler)
        except OSError as exc:
            raise ListenError.from_os_error(listen, exc, "api.listen") from exc

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        guard = self.context.guard
        if guard is not None and not guard.enter():  # over api.max_connections: refuse at once, spawn nothing
            try:
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self.context.guard is not None:
                self.context.guard.leave()

    def enter(self) -> bool:
        with self._cond:
            if self._closing:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def start(self) -> ApiServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="api", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> int:
        """Stop accepting, refuse new work, wait for in-flight requests; returns how many were left."""
        with self._cond:
            self._closing = True
        self.shutdown()
        with self._cond:
            self._cond.wait_for(lambda: self._active == 0, timeout=timeout)
            left = self._active
        self.server_close()
        if self.context.guard is not None:
            self.context.guard.close()
        return left
