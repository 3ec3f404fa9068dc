"""Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter").

Each delay is uniform in ``[0, min(cap, base * 2 ** attempt)]``: a fleet that lost its broker
at the same instant spreads its reconnects over the whole window instead of arriving together.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base_s: float = 1.0, cap_s: float = 60.0, rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("need 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Call only after the broker accepted the connection (CONNACK), not after a TCP connect."""
        self.attempt = 0
