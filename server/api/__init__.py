"""HTTP API: one router per resource in ``server.api.routes``; dependencies in ``server.api.deps``."""
