"""The 20 ms send clock: absolute deadlines (``start + n x 20 ms``), never ``sleep(0.02)``.

Sleeping a fixed 20 ms after each frame drifts by however long the work took; deadlines from
one start do not. Each send records how late it went out, so jitter and late frames can be
reported. Sans-I/O: the caller passes the time.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

from ipc.labels import LATENESS_BUCKETS

__all__ = ["FRAME", "ClockStats", "LatenessHistogram", "SendClock"]

FRAME = 0.020  # seconds per Opus frame
LATE = 0.005  # a frame sent more than this after its deadline counts as late


@dataclass(frozen=True)
class ClockStats:
    frames: int
    late: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class LatenessHistogram:
    """Every frame's lateness since the process started, in the buckets of
    ``ipc.labels.LATENESS_BUCKETS`` (one count per bucket, the last one +Inf), and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENESS_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, lateness: float) -> None:
        self.counts[bisect_left(LATENESS_BUCKETS, lateness)] += 1
        self.total += lateness


class SendClock:
    def __init__(self, start: float, *, keep: int = 3000) -> None:
        self.start = start
        self.sent = 0
        self.late = 0
        self._lateness: list[float] = []
        self._keep = keep

    def deadline(self) -> float:
        """When the next frame is due."""
        return self.start + self.sent * FRAME

    def sent_at(self, now: float) -> float:
        """A frame went out at ``now``: note how late it was (returned, in seconds), move to
        the next deadline."""
        lateness = max(0.0, now - self.deadline())
        if lateness > LATE:
            self.late += 1
        self._lateness.append(lateness)
        if len(self._lateness) > self._keep:
            del self._lateness[: len(self._lateness) - self._keep]
        self.sent += 1
        return lateness

    def behind(self, now: float) -> int:
        """How many deadlines have already passed (frames owed if we fell behind)."""
        return max(0, math.floor((now - self.start) / FRAME) - self.sent + 1)

    def restart(self, now: float) -> None:
        """After a pause: deadlines start again from ``now`` (late counts stay)."""
        self.start = now
        self.sent = 0

    def stats(self) -> ClockStats:
        values = sorted(self._lateness) or [0.0]

        def pick(q: float) -> float:
            return values[min(len(values) - 1, int(q * len(values)))] * 1000

        return ClockStats(len(self._lateness), self.late, pick(0.50), pick(0.99), values[-1] * 1000)
