"""The project's exception hierarchy. Third-party errors are translated at the
boundary into one of these, raised ``from`` the original.

    EdgefleetError
    ├── ConfigError            a config file or override is invalid (names key and file)
    ├── ListenError            an address to listen on is taken or cannot be bound (names it)
    ├── ModelError
    │   ├── ModelLoadError     missing, truncated, corrupt or unsupported model file
    │   └── InvalidInputError  inputs that do not match the model's signature
    ├── RuntimeUnavailable     no runtime/delegate can serve the model here
    ├── SignatureError         a manifest whose Ed25519 signature does not verify
    ├── UpdateRejected         a manifest or artifact refused by policy (expired, older, hash)
    └── TransportError         the update server or broker could not be reached
        └── Refused            the server refused this device's credentials (HTTP 401, 403, 409)
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose."""


class ConfigError(EdgefleetError):
    pass


class ListenError(EdgefleetError):
    @classmethod
    def from_os_error(cls, address: str, exc: OSError, setting: str) -> ListenError:
        """``cannot listen on 127.0.0.1:8500 (api.listen): address already in use``."""
        reason = (exc.strerror or str(exc)).lower()
        return cls(f"cannot listen on {address} ({setting}): {reason}")


class ModelError(EdgefleetError):
    pass


class ModelLoadError(ModelError):
    pass


class InvalidInputError(ModelError):
    pass


class RuntimeUnavailable(EdgefleetError):
    pass


class SignatureError(EdgefleetError):
    pass


class UpdateRejected(EdgefleetError):
    pass


class TransportError(EdgefleetError):
    pass


class Refused(TransportError):
    """``status`` is the HTTP status: 401 (token unknown or revoked), 403 (waiting for approval, or another
    device's token), 409 (the id is enrolled and this is not its token)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
