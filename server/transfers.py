"""Which bytes travel to a device: the smallest valid option from the artifact it runs to the one it should run.

Options: the full artifact, each stored delta to it (``bsdiff4``, ``tensor``), and each ready ``delta-q8``
variant made from what the device runs for that target (its tensor delta). The smallest wins; on a tie the
exact option and the simpler one. A device that already runs a delta variant of the target stays on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

OPTIONS = ("installed", "full", "bsdiff4", "tensor", "delta-q8")  # the tie-break order
DELTA_VARIANT = "delta-q8"  # the name prefix of delta variants (server/deltavariant.py)


def is_delta_variant(name: str) -> bool:
    return name.startswith(DELTA_VARIANT)


class DeltaOffer(NamedTuple):
    from_sha256: str
    sha256: str  # of the patch
    size: int
    algorithm: str = "bsdiff4"


class VariantView(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def size(self) -> int | None: ...
    @property
    def base_sha256(self) -> str | None: ...
    @property
    def of(self) -> str | None: ...


@dataclass(frozen=True)
class Transfer:
    option: str  # one of OPTIONS ("installed": nothing to send)
    variant: VariantView  # what the device installs (a delta-q8 variant where that option wins)
    delta: DeltaOffer | None
    bytes: int  # what crosses the wire
    full_bytes: int  # the full artifact of the target variant, for comparison

    def public(self) -> dict[str, object]:
        return {"option": self.option, "variant": self.variant.name, "sha256": self.variant.sha256,
                "bytes": self.bytes, "full_bytes": self.full_bytes,
                "ratio": round(self.bytes / self.full_bytes, 4) if self.full_bytes else None}


DeltaLookup = Callable[[str, str], Sequence[tuple[str, str, int]]]  # (from, to) -> [(algorithm, sha256, size)]


def choose_transfer(current: str | None, target: VariantView, variants: Sequence[VariantView],
                    deltas: DeltaLookup) -> Transfer:
    """The option for a device running ``current`` whose class and runtimes select ``target``."""
    assert target.sha256 is not None
    full_size = int(target.size or 0)
    if current == target.sha256:
        return Transfer("installed", target, None, 0, full_size)
    full = Transfer("full", target, None, full_size, full_size)
    if not current:
        return full
    derived = [v for v in variants if is_delta_variant(v.name) and v.status == "ready" and v.sha256
               and v.of == target.name]
    for variant in derived:
        if variant.sha256 == current:
            return Transfer("installed", variant, None, 0, full_size)  # it runs this version's delta variant
    options = [full]
    for algorithm, sha256, size in deltas(current, target.sha256):
        options.append(Transfer(algorithm, target, DeltaOffer(current, sha256, size, algorithm), size, full_size))
    for variant in derived:
        if variant.base_sha256 != current:
            continue
        assert variant.sha256 is not None
        for algorithm, sha256, size in deltas(current, variant.sha256):
            if algorithm == "tensor":
                options.append(Transfer("delta-q8", variant, DeltaOffer(current, sha256, size, algorithm), size,
                                        full_size))
    return min(options, key=lambda t: (t.bytes, OPTIONS.index(t.option)))
