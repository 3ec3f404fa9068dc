from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(state: StateDep) -> dict[str, Any]:
    ingest = state.ingestor.stats if state.ingestor else None
    return {"ok": True, "mqtt": None if ingest is None else {"connected": ingest.connected,
                                                           "protocol": ingest.protocol}}
