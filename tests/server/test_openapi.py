"""The OpenAPI document as a contract: the running server's /openapi.json is the committed docs/openapi.json,
every operation has a stable id, a typed success body and the one problem schema for its errors; every error
answer really is that problem document; /docs and /redoc need nothing from outside."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests

from edgefleet.server.openapi import REGENERATE
from edgefleet.server.problems import MEDIA_TYPE, Problem, title_of
from tests.support.server import RunningServer

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "docs" / "openapi.json"
OPERATION_ID = re.compile(r"^[a-z]+\.[a-z]+(_[a-z]+)*$")
PROBLEM = {"schema": {"$ref": "#/components/schemas/Problem"}}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@pytest.fixture(scope="module")
def document(server: RunningServer) -> dict[str, Any]:
    response = requests.get(server.url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    return dict(response.json())


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in document["paths"].items()
            for method, op in item.items() if method in METHODS]


def changed(live: dict[str, Any], committed: dict[str, Any]) -> list[str]:
    """Which paths and schemas differ, for the failure message."""
    out = []
    for section, a, b in (("path", live["paths"], committed["paths"]),
                          ("schema", live["components"]["schemas"], committed["components"]["schemas"])):
        out += [f"{section} {name}: {'added' if name not in b else 'removed' if name not in a else 'changed'}"
                for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
    return out or ["info or another top-level member"]


def test_the_live_document_is_the_committed_one(document: dict[str, Any]) -> None:
    committed = json.loads(COMMITTED.read_text())
    assert document == committed, (f"/openapi.json differs from {COMMITTED.relative_to(REPO)}; if the change is "
                                   f"deliberate run: {REGENERATE}\n" + "\n".join(changed(document, committed)[:30]))


def test_every_operation_has_a_stable_unique_id(document: dict[str, Any]) -> None:
    ids = [op.get("operationId") for _, _, op in operations(document)]
    wrong = [(method, path, op.get("operationId")) for method, path, op in operations(document)
             if not OPERATION_ID.match(str(op.get("operationId")))]
    assert wrong == [], wrong
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert {"devices.manifest", "devices.list", "devices.report", "devices.enroll", "artifacts.download",
            "models.upload", "rollouts.create", "rollouts.abort", "health.live"} <= set(ids)


def _typed(schema: dict[str, Any]) -> bool:
    return "$ref" in schema or schema.get("format") == "binary" or schema.get("type") == "string"


def test_every_success_body_is_typed(document: dict[str, Any]) -> None:
    untyped = []
    for method, path, op in operations(document):
        successes = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert successes, (method, path)
        for code, response in successes.items():
            if code == "204":
                assert "content" not in response, (method, path)
                continue
            for media, content in response.get("content", {None: {}}).items():
                if not _typed(content.get("schema", {})):
                    untyped.append((method, path, code, media))
    assert untyped == [], untyped
    manifest = document["components"]["schemas"]["SignedManifest"]["properties"]["manifest"]
    assert manifest == {"$ref": "#/components/schemas/Manifest"}  # the real model, not {}


def test_every_error_is_the_one_problem_schema(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["Problem"]["required"] == ["title", "status", "detail"]
    wrong, missing = [], []
    for method, path, op in operations(document):
        errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        wrong += [(method, path, code) for code, r in errors.items() if r.get("content") != {MEDIA_TYPE: PROBLEM}]
        wanted = set()
        if op.get("security") or op["operationId"] == "metrics.scrape":
            wanted.add("401")
        if op.get("security") and op["operationId"] != "devices.enroll":
            wanted.add("403")
        if op.get("parameters") or op.get("requestBody"):
            wanted.add("422")
        if op.get("requestBody"):
            wanted |= {"400", "413"}
        missing += [(method, path, code) for code in sorted(wanted - set(errors))]
    assert wrong == [], wrong
    assert missing == [], missing


def _problem(response: requests.Response, status: int, path: str) -> Problem:
    assert response.status_code == status, (path, response.status_code, response.text[:300])
    assert response.headers["content-type"] == MEDIA_TYPE, (path, response.headers["content-type"])
    problem = Problem.model_validate_json(response.content)
    assert (problem.type, problem.status, problem.title) == ("about:blank", status, title_of(status)), problem
    assert problem.detail and "\n" not in problem.detail, problem
    assert problem.instance == path, (problem.instance, path)
    return problem


def test_every_kind_of_error_answer_is_a_problem_document(server: RunningServer) -> None:
    device = {"Authorization": "Bearer " + server.enroll("problem-1")}
    admin = server.admin()
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/v1/no-such-route", {}, 404),  # the router's own 404
        ("DELETE", "/v1/models", {"headers": admin}, 405),
        ("GET", "/v1/models", {}, 401),  # HTTPBearer: no token
        ("GET", "/v1/models", {"headers": device}, 403),
        ("GET", "/v1/models/nothing-here", {"headers": admin}, 404),  # crud.NotFound
        ("GET", "/v1/rollouts/0", {"headers": admin}, 422),  # request validation
        ("POST", "/v1/rollouts", {"headers": admin, "json": {"model": "m", "version": 1,
                                                              "target": {"tags": ["none"]}}}, 404),
        ("POST", "/v1/enroll", {"json": {"device_id": "problem-1", "enrollment_token": server.enrollment_token}},
         409),
        ("POST", "/v1/enroll", {"data": b"{}" + b" " * 9000, "headers": {"Content-Type": "application/json"}},
         413),  # the body limits, before any route
        ("POST", "/v1/models/m/versions", {"headers": admin, "data": b"x"}, 415),
        ("GET", "/metrics", {}, 401),
        ("GET", "/v1/devices/problem-1/manifest", {"headers": admin}, 401),
    ]
    for method, path, options, status in cases:
        _problem(requests.request(method, server.url + path, timeout=10, **options), status, path)
    unauthorized = requests.get(server.url + "/v1/models", timeout=10)
    assert unauthorized.headers["WWW-Authenticate"] == "Bearer"


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_from_the_server_itself(server: RunningServer, page: str) -> None:
    """Swagger UI and ReDoc: no URL outside the server in the page, and every file it loads is served here."""
    html = requests.get(server.url + page, timeout=10)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "http://" not in html.text and "https://" not in html.text and "//cdn" not in html.text
    links = Links()
    links.feed(html.text)
    scripts = [u for u in links.urls if u.endswith(".js")]
    assert scripts, links.urls
    for url in links.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = requests.get(server.url + url, timeout=10)
        assert asset.status_code == 200 and len(asset.content) > 1000, (url, asset.status_code)
    bundle = requests.get(server.url + scripts[0], timeout=10).text
    assert ("SwaggerUIBundle" if page == "/docs" else "Redoc") in bundle
    assert "/openapi.json" in html.text
    if page == "/docs":
        assert '"validatorUrl": null' in html.text  # no badge fetched from the online validator


def test_a_drift_section_of_the_wrong_types_is_nulls_in_the_typed_flag() -> None:
    """``drift`` is free-form on the wire: one device's odd values become nulls in its DriftFlag instead of a
    response the model refuses (a 500 for the operator's whole device list)."""
    from edgefleet.server.api.public.devices import DriftFlag
    from edgefleet.server.quality import device_drift

    odd = device_drift({"model": 7, "version": "2", "drifted": "yes", "ready": 1, "max_psi": True,
                        "max_stat": ["x"], "samples": 3.5, "threshold": "0.2"})
    assert odd == dict.fromkeys(("model", "version", "drifted", "ready", "max_psi", "max_stat", "samples",
                                 "threshold", "synthetic", "reason"))
    good = {"model": "m", "version": 2, "drifted": True, "ready": True, "max_psi": 0.31, "max_stat": "mean",
            "samples": 500, "threshold": 0.2}
    assert device_drift({**good, "psi": {"mean": 0.31}}) == {**good, "synthetic": None, "reason": None}
    good = {**good, "synthetic": False, "reason": None}
    assert DriftFlag.model_validate(odd).model_dump() == odd and DriftFlag.model_validate(good).model_dump() == good
