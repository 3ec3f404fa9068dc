"""The update client's own HTTP (agent/ota/http.py) against real HTTP servers on local ports."""

from __future__ import annotations

import datetime
import http.server
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgefleet.agent.ota.http import HttpError, Session

Handle = Callable[[http.server.BaseHTTPRequestHandler], None]


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    connections = 0
    seen: list[tuple[str, dict[str, str]]]


@contextmanager
def serving(handle: Handle, tls: ssl.SSLContext | None = None) -> Iterator[_Server]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            type(self.server).connections += 1  # type: ignore[misc]
            super().setup()

        def do_GET(self) -> None:
            self.server.seen.append((self.path, dict(self.headers.items())))  # type: ignore[attr-defined]
            handle(self)

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server_class = type("Server", (_Server,), {"connections": 0})
    server = server_class(("127.0.0.1", 0), Handler)
    server.seen = []
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def reply(body: bytes = b"hello", status: int = 200, headers: dict[str, str] | None = None) -> Handle:
    def handle(request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        if length:
            request.rfile.read(length)
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
    return handle


def url(server: _Server, path: str = "/x", host: str = "127.0.0.1", scheme: str = "http") -> str:
    return f"{scheme}://{host}:{server.server_address[1]}{path}"


def test_a_kept_connection_serves_the_next_request() -> None:
    with serving(reply()) as server, Session() as session:
        for _ in range(5):
            assert session.get(url(server)).content == b"hello"
        answer = session.request("GET", url(server), headers={"If-None-Match": '"a"'}, stream=True)
        answer.close()
    assert server.connections == 1


def test_not_modified_answers_free_their_connection() -> None:
    with serving(reply(b"", 304, {"ETag": '"v1"'})) as server, Session() as session:
        for _ in range(3):
            answer = session.request("GET", url(server), stream=True)
            assert answer.status_code == 304 and answer.headers.get("etag") == '"v1"'
            answer.close()
    assert server.connections == 1


def test_a_connection_the_server_closed_is_replaced_once() -> None:
    def close_after(request: http.server.BaseHTTPRequestHandler) -> None:
        reply()(request)
        request.close_connection = True  # keep-alive announced, then dropped: what an idle timeout does

    with serving(close_after) as server, Session() as session:
        for _ in range(3):
            assert session.get(url(server)).content == b"hello"
    assert server.connections == 3


def test_json_params_and_headers_go_out_as_given() -> None:
    with serving(reply(b'{"ok": true}')) as server, Session() as session:
        answer = session.request("POST", url(server, "/r"), params={"since": 3}, json={"a": 1},
                                 headers={"Authorization": "Bearer t"})
        assert answer.json() == {"ok": True}
    path, headers = server.seen[-1]
    assert path == "/r?since=3"
    assert headers["Authorization"] == "Bearer t" and headers["Content-Type"] == "application/json"


def test_redirects_keep_the_token_on_the_same_server_and_drop_it_elsewhere() -> None:
    def moved(request: http.server.BaseHTTPRequestHandler) -> None:
        if request.path == "/final":
            reply(b"moved here")(request)
        else:
            reply(b"", 307, {"Location": "/final"})(request)

    with serving(moved) as target:
        elsewhere = url(target, "/final", host="localhost")  # another host name: another origin
        with serving(reply(b"", 302, {"Location": elsewhere})) as away, Session() as session:
            auth = {"Authorization": "Bearer secret"}
            assert session.get(url(away), headers=auth).content == b"moved here"
            assert "Authorization" not in target.seen[-1][1]
            assert session.get(url(target, "/old"), headers=auth).content == b"moved here"
            assert [path for path, _ in target.seen[-2:]] == ["/old", "/final"]
            assert target.seen[-1][1]["Authorization"] == "Bearer secret"


def test_a_redirect_loop_is_an_error() -> None:
    with serving(reply(b"", 302, {"Location": "/x"})) as server, Session() as session, \
            pytest.raises(HttpError, match="more than 5 redirects"):
        session.get(url(server))


def test_a_silent_server_times_out_and_a_closed_port_is_refused() -> None:
    def silent(request: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(1.5)
        reply()(request)

    with serving(silent) as server, Session() as session, pytest.raises(HttpError, match="timed out"):
        session.get(url(server), timeout=(2.0, 0.3))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(OSError, match="ConnectionRefusedError"):
        Session().get(f"http://127.0.0.1:{closed}/x", timeout=2.0)
    with pytest.raises(HttpError, match="not an http"):
        Session().get("ftp://127.0.0.1/x")


def test_a_body_cut_mid_way_is_an_error_not_a_short_file() -> None:
    def cut(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Length", "100000")
        request.end_headers()
        request.wfile.write(b"x" * 1000)
        request.close_connection = True

    with serving(cut) as server, Session() as session:
        answer = session.request("GET", url(server), stream=True)
        with pytest.raises(HttpError):
            b"".join(answer.iter_content(4096))


def test_an_http_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with serving(reply(b"via proxy")) as proxy, Session() as session:
        monkeypatch.setenv("http_proxy", f"http://user:pw@127.0.0.1:{proxy.server_address[1]}")
        assert session.get("http://updates.example:8080/v1/x").content == b"via proxy"
        path, headers = proxy.seen[-1]
        assert path == "http://updates.example:8080/v1/x"
        assert headers["Proxy-Authorization"] == "Basic dXNlcjpwdw=="
        monkeypatch.setenv("no_proxy", ".example")
        with pytest.raises(HttpError):
            session.get("http://updates.example:8080/v1/x", timeout=2.0)  # direct now: the name does not resolve
        assert len(proxy.seen) == 1


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_is_verified_against_the_ca_store_ssl_cert_file_names(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = _certificate(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with serving(reply(b"secure"), tls) as server:
        with pytest.raises(HttpError, match="CERTIFICATE_VERIFY_FAILED"):
            Session().get(url(server, host="localhost", scheme="https"), timeout=5.0)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with Session() as session:
            assert session.get(url(server, host="localhost", scheme="https"), timeout=5.0).content == b"secure"
            with pytest.raises(HttpError, match=r"CERTIFICATE_VERIFY_FAILED|match"):  # the name is not 127.0.0.1
                session.get(url(server, host="127.0.0.1", scheme="https"), timeout=5.0)
