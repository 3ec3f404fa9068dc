"""Apply a manifest's delta by its algorithm: ``bsdiff4`` (bytes) or ``tensor`` (agent/ota/tensordelta.py).

An algorithm this agent does not know is skipped before anything is downloaded: the client fetches the
full artifact instead.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.agent.errors import UpdateRejected
from edgefleet.agent.ota.download import apply_delta
from edgefleet.agent.ota.tensordelta import apply_tensor_delta

ALGORITHMS = ("bsdiff4", "tensor")


def patch_supported(algorithm: str) -> bool:
    return algorithm in ALGORITHMS


def apply_patch(algorithm: str, old: Path, patch: Path, out: Path) -> None:
    """Rebuild ``out`` from the installed ``old`` and ``patch``; UpdateRejected when it does not apply."""
    if algorithm == "bsdiff4":
        apply_delta(old, patch, out)
    elif algorithm == "tensor":
        apply_tensor_delta(old, patch, out)
    else:
        raise UpdateRejected(f"delta algorithm {algorithm!r} is not supported by this agent")
