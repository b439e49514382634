"""How long to wait before trying again: exponential, capped, with jitter so that many
clients failing together do not retry together. One formula for every retry in shardline
(gateway reconnects, voice reconnects and rejoins, process respawns)."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["backoff_delay"]


def backoff_delay(
    failures: int,
    base: float,
    cap: float,
    rng: Callable[[], float] = random.random,
) -> float:
    """The wait after ``failures`` failures in a row (0 or less: none yet, no wait):
    ``base``, doubled per further failure, at most ``cap``, then spread over its upper half
    ("equal jitter": never less than half, so growth still shows)."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 32))
    return ceiling * (0.5 + rng() / 2)
