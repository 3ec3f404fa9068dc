"""RFC 9457 problem documents: the one shape of every error answer of the server.

The route handlers (server/api/errors.py), the body limits (server/limits.py) and the connection guard
(server/serving.py) all build their bodies here, so a client parses one document whatever refused it.
Only pydantic and the standard library are imported: the pure ASGI and protocol layers use it too.
"""

from __future__ import annotations

from http import HTTPStatus
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

MEDIA_TYPE = "application/problem+json"
# RFC 9110's names where Python's table still has the older ones (3.10 to 3.12)
PATH_SAFE = "/!$&'()*+,;=:@"  # RFC 3986 pchar delimiters kept as they are; "%" itself is encoded
TITLES = {413: "Content Too Large", 414: "URI Too Long", 416: "Range Not Satisfiable", 422: "Unprocessable Content"}


class Problem(BaseModel):
    """An error answer (RFC 9457). ``type`` is ``about:blank``: the status says what kind of problem it is,
    ``title`` is the status' name and ``detail`` one line for a person. Clients ignore members they do not
    know (the RFC's extension members)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "type": "about:blank", "title": "Not Found", "status": 404, "detail": "model detector is not known",
        "instance": "/v1/models/detector"}]})

    type: str = Field(default="about:blank", description="a URI reference naming the problem type",
                      json_schema_extra={"format": "uri-reference"})
    title: str = Field(description="the HTTP status' name")
    status: int = Field(ge=400, le=599, description="the HTTP status code of this answer")
    detail: str = Field(description="what went wrong, in one line")
    instance: str | SkipJsonSchema[None] = Field(default=None, description="the request path that met the problem",
                                                 json_schema_extra={"format": "uri-reference"})


def title_of(status: int) -> str:
    if status in TITLES:
        return TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def one_line(text: str, fallback: str) -> str:
    lines = text.strip().splitlines() if text else []
    return lines[0].strip() if lines and lines[0].strip() else fallback


def problem(status: int, detail: str, *, instance: str | None = None, title: str | None = None) -> Problem:
    """``instance``: the request's (decoded) path, percent-encoded again into a URI reference."""
    title = title or title_of(status)
    where = quote(instance, safe=PATH_SAFE) if instance is not None else None
    return Problem(title=title, status=status, detail=one_line(detail, title), instance=where)


def problem_bytes(status: int, detail: str, *, instance: str | None = None, title: str | None = None) -> bytes:
    """The JSON body; ``instance`` is left out when there is none."""
    return problem(status, detail, instance=instance, title=title).model_dump_json(exclude_none=True).encode()
