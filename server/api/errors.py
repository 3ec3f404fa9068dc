"""Every error answer is an RFC 9457 problem document (server/problems.py), and the OpenAPI document says so.

- ``install(app)``: exception handlers for HTTPException (FastAPI's and Starlette's: also unknown paths and
  methods), request validation, the data-access errors (NotFound, Conflict, Invalid, IntegrityError) and any
  other exception (a 500 without its traceback).
- ``problems(401, 404, ...)``: the ``responses=`` table of a route, each status with the one ``Problem``
  schema under ``application/problem+json``; ``add_problem_schema`` puts that schema into the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgefleet.server.crud import Conflict, Invalid, NotFound
from edgefleet.server.problems import MEDIA_TYPE, Problem, problem_bytes

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
BODY_ERRORS = (400, 413, 422)  # every route that reads a body: unreadable or too deep, over its limit, invalid
DESCRIPTIONS = {
    400: "the request cannot be read (a bad multipart body, JSON nested too deep)",
    401: "no bearer token, or one the server does not know",
    403: "a valid token that may not open this route",
    404: "not found",
    406: "the manifest form the Accept header asks for is not served",
    409: "conflicts with the current state",
    413: "the request body is larger than this route's limit",
    431: "the request line and headers are larger than http.max_header_kb (e.g. too many query values)",
    415: "the body is not of the media type this route takes",
    416: "the Range cannot be satisfied",
    422: "the request is not valid: one line says which part and why",
    429: "over the number the server allowed",
    503: "not available now: retry after Retry-After seconds",
}


def problems(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can answer these statuses; ``descriptions`` (``s404="..."``) replace
    the default line of a status."""
    table: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        text = descriptions.get(f"s{status}", DESCRIPTIONS[status])
        table[status] = {"description": text, "content": {MEDIA_TYPE: {"schema": PROBLEM_REF}}}
    return table


def add_problem_schema(schema: dict[str, Any]) -> dict[str, Any]:
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = Problem.model_json_schema(
        ref_template="#/components/schemas/{model}")
    return schema


def answer(request: Request, status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    body = problem_bytes(status, detail, instance=request.url.path)
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code < 400:  # not an error: no problem document
            return Response(status_code=exc.status_code, headers=exc.headers)
        return answer(request, exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return answer(request, 422, _one_line(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return answer(request, 404, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> Response:
        return answer(request, 409, str(exc))

    @app.exception_handler(Invalid)
    async def _bad(request: Request, exc: Invalid) -> Response:
        return answer(request, 422, str(exc))

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError) -> Response:
        return answer(request, 409, "conflicting concurrent change, retry")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:  # logged by the server's error middleware
        return answer(request, 500, f"internal error ({type(exc).__name__}); the server's log has the details")


def _one_line(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
