"""Response bodies of the HTTP API: what each route answers, as the OpenAPI document shows it.

The data-access functions (``server/crud``) build plain dicts; the routes declare these models as their
``response_model``, so FastAPI validates each answer against its model and the schema is the contract.
Every model forbids keys it does not name: a key added to a ``*_public`` dict without its field here is an
error in the tests, not a silently dropped field. Routes answer with ``exclude_unset`` (server/api/routing.py),
so a key the dict leaves out stays out, as before the models existed.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class Public(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# a value a device reported in a free-form section, passed on as it came (any JSON)
Reported = Annotated[Any, Field(description="as the device reported it")]
Timestamp = Annotated[float, Field(description="UNIX seconds")]
Sha256 = Annotated[str, Field(description="hex sha256", examples=["0" * 64])]
