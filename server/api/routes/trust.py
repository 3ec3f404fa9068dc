"""The root of trust's chain (docs/ota.md "Root of trust"): public, like TUF's N.root.json files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from edgefleet.server.api.deps import StateDep
from edgefleet.server.api.errors import problems
from edgefleet.server.api.public.service import TrustRoots
from edgefleet.server.api.routing import ContractRoute

router = APIRouter(tags=["trust"], route_class=ContractRoute)
MAX_ROOTS = 100


@router.get("/v1/trust/roots", operation_id="trust.roots", response_model=TrustRoots, responses=problems(422))
def roots(state: StateDep, since: Annotated[int, Query(ge=0, le=1 << 31, description="root version the device has")]
          = 0) -> JSONResponse:
    """Signed root versions newer than ``since``, ascending, at most 100 (ask again from the last)."""
    material = state.signer.material()
    newer = [r for r in material.chain if int(r.signed["version"]) > since][:MAX_ROOTS]
    # the signed documents go out exactly as they were signed: the model only documents them
    return JSONResponse({"roots": [r.model_dump(mode="json") for r in newer], "latest": material.root_version})
