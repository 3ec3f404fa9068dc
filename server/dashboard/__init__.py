"""The operator dashboard: server-rendered HTML with inline SVG charts (``router``)."""

from server.dashboard.routes import router

__all__ = ["router"]
