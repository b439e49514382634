"""What a shard process counts for metrics: dispatches by event type, identifies, resumes,
invalid sessions, heartbeat ACKs and closes by code. Counts start at zero with the process;
each status report carries them whole, and the supervisor adds them up across restarts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ipc.labels import close_code_label, dispatch_label

__all__ = ["DispatchTypes", "ShardCounters", "TypeCount"]

MAX_INTERNED_TYPES = 512  # distinct type names kept; a server sending more gets them uncached


class TypeCount:
    """One dispatch type: its name (interned, for the hot path), label and count."""

    __slots__ = ("count", "label", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.label = dispatch_label(name)
        self.count = 0


class DispatchTypes(dict[bytes, TypeCount]):
    """Dispatch type names as the gateway sent them, each decoded once and counted. The hot
    path reads ``get(t_bytes)`` and bumps ``count``; a miss goes through :meth:`add`."""

    def __init__(self) -> None:
        super().__init__()
        self._uncached: Counter[str] = Counter()  # past the cap: counted by label only

    def add(self, t_bytes: bytes) -> TypeCount:
        entry = TypeCount(t_bytes.decode("utf-8", "replace"))
        if len(self) < MAX_INTERNED_TYPES:
            self[t_bytes] = entry
        else:  # counted under its label now; the entry is not kept
            self._uncached[entry.label] += 1
            entry.count = -1  # the caller's += 1 leaves it at 0: not counted twice
        return entry

    def count_name(self, name: str) -> None:
        """A dispatch whose type came as a str (the parsed path)."""
        t_bytes = name.encode()
        entry = self.get(t_bytes) or self.add(t_bytes)
        entry.count += 1

    def by_label(self) -> dict[str, int]:
        """Counts per ``event_type`` label (docs/metrics.md), for the status report."""
        totals: Counter[str] = Counter(self._uncached)
        for entry in self.values():
            if entry.count:
                totals[entry.label] += entry.count
        return dict(totals)


@dataclass
class ShardCounters:
    """The protocol's counts since the process started (never reset)."""

    identifies: int = 0  # IDENTIFYs sent
    resumes: int = 0  # RESUMEs sent
    invalid_sessions: int = 0  # op 9 received, resumable or not
    heartbeat_acks: int = 0
    closes: Counter[str] = field(default_factory=Counter)  # closes we did not ask for

    def closed(self, code: int | None) -> None:
        self.closes[close_code_label(code)] += 1
