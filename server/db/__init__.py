"""The server's database: SQLAlchemy 2 models, engine set-up and Alembic migrations."""

from server.db.models import Base
from server.db.session import Database, migrate, normalize_url

__all__ = ["Base", "Database", "migrate", "normalize_url"]
