"""``/healthz`` (the process answers) and ``/readyz`` (it can serve: database reachable, schema at head)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from edgefleet.server.api.deps import StateDep
from edgefleet.server.api.errors import problems
from edgefleet.server.api.public.service import Health, Ready
from edgefleet.server.api.routing import ContractRoute
from edgefleet.server.db import head_revision, schema_revision
from edgefleet.server.problems import MEDIA_TYPE, problem
from edgefleet.server.state import ServerState

router = APIRouter(tags=["health"], route_class=ContractRoute)
HEAD = head_revision()
# its own threads: a load balancer's probe must not queue behind busy request threads and mark a loaded
# replica down
_probe_threads = anyio.CapacityLimiter(2)
READY_TIMEOUT_S = 2.0


@router.get("/healthz", operation_id="health.live", response_model=Health)
def healthz(state: StateDep) -> dict[str, Any]:
    """Alive: answers while the process serves HTTP (the database is not asked)."""
    ingest = state.ingestor.stats if state.ingestor else None
    return {"ok": True, "mqtt": None if ingest is None else {"connected": ingest.connected,
                                                           "protocol": ingest.protocol}}


def _readiness(state: ServerState) -> dict[str, Any]:
    try:
        current = schema_revision(state.db.engine)
    except Exception as exc:
        return {"ready": False, "reason": f"database unreachable: {exc.__class__.__name__}"}
    if current != HEAD:
        return {"ready": False, "reason": f"schema at {current}, this server needs {HEAD}"}
    return {"ready": True, "schema": current}


@router.get("/readyz", operation_id="health.ready", response_model=Ready, responses=problems(
    503, s503="not ready: the database does not answer (within 2 s) or its schema is not at this code's head; "
              "the problem document carries `ready: false`, `reason` and `replica`"))
async def readyz(state: StateDep) -> Any:
    """200 when this replica can serve: the database answers and its schema is at this code's head."""
    doc: dict[str, Any] = {"ready": False, "reason": f"database did not answer in {READY_TIMEOUT_S:g} s"}
    with anyio.move_on_after(READY_TIMEOUT_S):
        doc = await anyio.to_thread.run_sync(_readiness, state, limiter=_probe_threads, abandon_on_cancel=True)
    doc["replica"] = state.replica_id
    if doc["ready"]:
        doc["leads"] = sorted(name for name, held in state.leases.holding().items() if held)
        return doc
    body = problem(503, doc["reason"], instance="/readyz").model_dump(exclude_none=True)
    return JSONResponse({**body, **doc}, status_code=503, media_type=MEDIA_TYPE)
