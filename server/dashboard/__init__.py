"""The operator dashboard: server-rendered HTML with inline SVG charts (``router``)."""

from edgefleet.server.dashboard.actions import router as actions_router
from edgefleet.server.dashboard.routes import router

router.include_router(actions_router)

__all__ = ["router"]
