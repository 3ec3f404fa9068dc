from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server.api.deps import StateDep
from server.api.public.service import Health
from server.api.routing import ContractRoute

router = APIRouter(tags=["health"], route_class=ContractRoute)


@router.get("/healthz", operation_id="health.live", response_model=Health)
def healthz(state: StateDep) -> dict[str, Any]:
    """Alive: answers while the process serves HTTP (the database is not asked)."""
    ingest = state.ingestor.stats if state.ingestor else None
    return {"ok": True, "mqtt": None if ingest is None else {"connected": ingest.connected,
                                                           "protocol": ingest.protocol}}
