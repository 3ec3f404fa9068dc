"""The server's database: SQLAlchemy 2 models, engine set-up and Alembic migrations."""

from edgefleet.server.db.models import Base
from edgefleet.server.db.session import Database, head_revision, migrate, normalize_url, schema_revision

__all__ = ["Base", "Database", "head_revision", "migrate", "normalize_url", "schema_revision"]
