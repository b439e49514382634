"""What each shard and voice session counted, added up across its processes: the numbers
the metrics (runtime/metrics.py) show. Kept apart from the Prometheus side, which a
supervisor loads only when ``[metrics]`` is configured."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ipc.control import ShardStatus, VoiceStatus
from ipc.labels import (
    DISPATCH_TYPES,
    LATENESS_BUCKETS,
    OTHER,
    close_code_label,
    lateness_bucket_labels,
)
from ipc.status import reported_count, reported_number

__all__ = ["LATENCY_BUCKETS", "Histogram", "ShardTotals", "VoiceTotals"]

# Heartbeat round trip (seconds): Discord's is tens of ms; a sick connection takes seconds.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Counts per bucket (the last one +Inf) and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), -1)
        self.counts[index] += times
        self.total += value * times

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus's buckets: ``(le, count of values <= le)``, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class _ProcessCounts:
    """Turns one process's running totals into increments: a new process (another pid)
    starts from zero, and a value that went down (a confused or hostile report) is taken as
    the new starting point rather than subtracted."""

    def __init__(self) -> None:
        self._process: int | None = None
        self._last: dict[tuple[str, str], int] = {}

    def start(self, process: int) -> None:
        if process != self._process:
            self._process = process
            self._last = {}

    def delta(self, key: tuple[str, str], value: int) -> int:
        last = self._last.get(key, 0)
        self._last[key] = value
        return value - last if value > last else 0


_SHARD_COUNTERS = ("reconnects", "identifies", "resumes", "invalid_sessions", "dropped")


@dataclass
class ShardTotals:
    """One shard's counts since the supervisor started, across its processes."""

    counts: Counter[str] = field(default_factory=Counter)  # see _SHARD_COUNTERS
    dispatches: Counter[str] = field(default_factory=Counter)  # by event_type label
    closes: Counter[str] = field(default_factory=Counter)  # by close code label
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    _seen: _ProcessCounts = field(default_factory=_ProcessCounts)

    def add(self, process: int, status: ShardStatus) -> None:
        """A status report from the shard's process ``process`` (its pid)."""
        seen = self._seen
        seen.start(process)
        raw = status.raw if isinstance(status.raw, dict) else {}
        for name in _SHARD_COUNTERS:
            self.counts[name] += seen.delta(("", name), reported_count(raw.get(name)))
        for label, value in _by_label(status.dispatch_types, DISPATCH_TYPES).items():
            self.dispatches[label] += seen.delta(("dispatch", label), value)
        for label, value in _by_label(status.closes, _CLOSE_LABELS).items():
            self.closes[label] += seen.delta(("close", label), value)
        acks = seen.delta(("", "heartbeat_acks"), reported_count(raw.get("heartbeat_acks")))
        latency = reported_number(raw.get("latency_ms"))
        if acks and latency is not None:  # a report per second, a heartbeat per ~41 s
            self.latency.observe(latency / 1000, acks)


def _by_label(counts: dict[str, int], known: frozenset[str]) -> Counter[str]:
    """Reported counts with every name outside ``known`` summed under "other"."""
    out: Counter[str] = Counter()
    for name, count in counts.items():
        out[name if name in known else OTHER] += count
    return out


_CLOSE_LABELS = frozenset(
    close_code_label(code) for code in (None, *range(1000, 1016), *range(4000, 4023))
)
_BUCKET_LABELS = lateness_bucket_labels()


@dataclass
class VoiceTotals:
    """One voice session's counts since it was joined, across its processes (rejoins)."""

    packets: int = 0
    late: int = 0
    transitions: int = 0
    epoch: int = 0
    lateness: Histogram = field(default_factory=lambda: Histogram(LATENESS_BUCKETS))
    _seen: _ProcessCounts = field(default_factory=_ProcessCounts)
    _lateness_sum: float = 0.0  # the current process's reported sum

    def add(self, process: int, status: VoiceStatus) -> None:
        seen = self._seen
        if process != seen._process:
            self._lateness_sum = 0.0
        seen.start(process)
        raw = status.raw if isinstance(status.raw, dict) else {}
        self.packets += seen.delta(("", "packets"), reported_count(raw.get("packets")))
        self.late += seen.delta(("", "late"), reported_count(raw.get("late")))
        self.transitions += seen.delta(
            ("", "dave_transitions"), reported_count(raw.get("dave_transitions"))
        )
        self.epoch = reported_count(raw.get("dave_epoch"))
        buckets = status.lateness_buckets
        for index, label in enumerate(_BUCKET_LABELS):
            self.lateness.counts[index] += seen.delta(("lateness", label), buckets.get(label, 0))
        reported_sum = reported_number(raw.get("lateness_sum")) or 0.0
        if reported_sum > self._lateness_sum:
            self.lateness.total += reported_sum - self._lateness_sum
            self._lateness_sum = reported_sum
