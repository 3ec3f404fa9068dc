"""The root of trust's chain (docs/ota.md "Root of trust"): public, like TUF's N.root.json files."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from server.api.deps import StateDep

router = APIRouter(tags=["trust"])
MAX_ROOTS = 100


@router.get("/v1/trust/roots")
def roots(state: StateDep, since: Annotated[int, Query(ge=0, le=1 << 31, description="root version the device has")]
          = 0) -> dict[str, Any]:
    """Signed root versions newer than ``since``, ascending, at most 100 (ask again from the last)."""
    material = state.signer.material()
    newer = [r for r in material.chain if int(r.signed["version"]) > since][:MAX_ROOTS]
    return {"roots": [r.model_dump(mode="json") for r in newer], "latest": material.root_version}
