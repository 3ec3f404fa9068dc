"""The installed distribution's version, for ``--version`` and the agent's birth message."""

from __future__ import annotations

import platform


def package_version() -> str:
    from importlib import metadata  # ~25 ms and 3 MB (email, zipfile, csv): only for what asks for the version

    try:
        return metadata.version("edgefleet")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def version_line(prog: str) -> str:
    """``edgefleet-agent 0.1.0 (Python 3.11.2)``: what every program's ``--version`` prints."""
    return f"{prog} {package_version()} (Python {platform.python_version()})"
