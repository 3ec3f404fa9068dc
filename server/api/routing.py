"""The route class of every API router: answers keep exactly the keys their handler gave.

Handlers return the dicts that ``server/crud`` builds; FastAPI validates them against the route's
``response_model`` (server/api/public). With ``exclude_unset`` a key the dict leaves out (``rollups``
without ``rollups=true``, ``drift_profile_note``, a gate an old rollout never had) stays out instead of
appearing as the field's default, so the typed bodies are the ones clients parsed before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute


class ContractRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["response_model_exclude_unset"] = True
        super().__init__(path, endpoint, **kwargs)
