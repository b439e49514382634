"""The gateway's outgoing limit (120 payloads per 60 s per connection), with headroom kept
for heartbeats so that no flood of commands can ever delay one. Sans-I/O: time is passed in."""

from __future__ import annotations

from collections import deque

__all__ = ["SendLimiter"]


class SendLimiter:
    """A sliding-window log, the same measure the gateway applies. Commands may use
    ``limit - heartbeat_reserve`` slots of a window; heartbeats may use all of them."""

    def __init__(self, limit: int = 120, window: float = 60.0, heartbeat_reserve: int = 5) -> None:
        if not 0 < heartbeat_reserve < limit:
            raise ValueError("heartbeat_reserve must be between 0 and limit")
        self.limit = limit
        # The gateway counts payloads when they arrive, we when they leave: a margin keeps a
        # slot taken until it has surely left the gateway's window too.
        self.window = window + max(0.25, window * 0.02)
        self.command_limit = limit - heartbeat_reserve
        self._sent: deque[float] = deque()

    def reserve_for_heartbeats(self, interval: float) -> None:
        """Keep enough slots for every heartbeat a window can hold at ``interval`` seconds,
        plus two for heartbeats the gateway requests (op 1)."""
        needed = int(self.window // interval) + 3 if interval > 0 else self.limit - 1
        reserve = max(self.limit - self.command_limit, needed)
        self.command_limit = max(1, self.limit - reserve)

    def _expire(self, now: float) -> None:
        sent = self._sent
        while sent and sent[0] <= now - self.window:
            sent.popleft()

    def try_acquire(self, now: float, *, heartbeat: bool = False) -> bool:
        """Take a slot if one is free; True when the payload may be sent now."""
        self._expire(now)
        if len(self._sent) >= (self.limit if heartbeat else self.command_limit):
            return False
        self._sent.append(now)
        return True

    def next_free(self, now: float, *, heartbeat: bool = False) -> float:
        """When a slot next frees up (``now`` if one is free already)."""
        self._expire(now)
        cap = self.limit if heartbeat else self.command_limit
        if len(self._sent) < cap:
            return now
        return self._sent[len(self._sent) - cap] + self.window

    def earliest_free(self) -> float:
        """The earliest time a command slot may be free (0.0 when one may be free now); exact
        after expiry, so a caller polls at that time and calls :meth:`try_acquire`."""
        cap = self.command_limit
        if len(self._sent) < cap:
            return 0.0
        return self._sent[len(self._sent) - cap] + self.window

    def reset(self) -> None:
        """A new connection starts a new window."""
        self._sent.clear()

    @property
    def used(self) -> int:
        return len(self._sent)
