"""The OpenAPI document of the update server, and the command that writes the committed copy.

    python -m server.openapi docs/openapi.json     # regenerate after changing a route
    python -m server.openapi --check docs/openapi.json

``install(app)`` makes ``/openapi.json`` the document FastAPI builds from the routes plus the ``Problem``
schema (server/api/errors.py) that every error answer references. tests/server/test_openapi.py compares a
running server's ``/openapi.json`` with docs/openapi.json, so every change to the contract is deliberate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from edgefleet.server.api.errors import add_problem_schema

REGENERATE = "python -m server.openapi docs/openapi.json"
DESCRIPTION = ("The update server of edgefleet: device enrollment, signed desired-state manifests, artifact and "
               "delta downloads, update reports; the model registry, variants, rollouts, devices, telemetry and "
               "model quality for operators. Authorization: Bearer with an admin token (operator routes) or a "
               "device token (device routes). Every error is an RFC 9457 problem document "
               "(application/problem+json). Operation ids are stable: resource.verb.")


def install(app: FastAPI) -> None:
    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_problem_schema(get_openapi(
                title=app.title, version=app.version, openapi_version=app.openapi_version,
                description=app.description, routes=app.routes, tags=app.openapi_tags))
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def build() -> dict[str, Any]:
    """The document of an app made from a throw-away ``edgefleet-server init`` (no server is started)."""
    from edgefleet.server.app import create_app
    from edgefleet.server.cli import init
    from edgefleet.server.config import load_server_config

    with tempfile.TemporaryDirectory(prefix="edgefleet-openapi-") as scratch:
        config = load_server_config(init(Path(scratch), force=True))
        app = create_app(config, background=False)
        try:
            return app.openapi()
        finally:
            app.state.edgefleet.db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.openapi", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, nargs="?", help="write here (default: stdout)")
    parser.add_argument("--check", action="store_true", help="exit 1 when PATH differs from the routes")
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        if args.path is None or not args.path.exists() or args.path.read_text() != text:
            print(f"{args.path} is not the routes' OpenAPI document: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if args.path is None:
        sys.stdout.write(text)
    else:
        args.path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
