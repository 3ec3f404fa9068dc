"""Data access: functions over a SQLAlchemy Session, keyword-only arguments, no HTTP.

The operator CLI, dashboard and /metrics read through these; routes call them and
translate ``NotFound``/``Conflict``/``Invalid`` into 404/409/422.
"""

from edgefleet.agent.errors import EdgefleetError


class NotFound(EdgefleetError):
    pass


class Conflict(EdgefleetError):
    pass


class Invalid(EdgefleetError):
    pass


__all__ = ["Conflict", "Invalid", "NotFound"]
