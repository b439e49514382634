"""The heartbeat as data: when the next beat is due, whether the last one was acknowledged,
and what the round trip took. No clock and no socket: the loop asks :meth:`Pacemaker.due`
at its deadline and sends the beat itself, so a heartbeat never races a write; a beat that
comes due while the previous one is unacknowledged means a zombied connection (arikawa #324:
liveness belongs in the loop core)."""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import Enum

__all__ = ["Beat", "Pacemaker"]


class Beat(Enum):
    SEND = "send"  # send a heartbeat now, then call :meth:`Pacemaker.sent`
    ZOMBIE = "zombie"  # the last heartbeat was never acknowledged: close and resume


class Pacemaker:
    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self.rng = rng
        self.interval: float | None = None
        self.next_beat: float | None = None
        self.awaiting_ack = False
        self.sent_at: float | None = None
        self.latency: float | None = None  # seconds, from the last acknowledged beat

    def start(self, interval: float, now: float) -> None:
        """HELLO said ``interval``: the first beat comes after a random part of it (so that
        a fleet reconnecting together does not beat together), the rest every interval."""
        self.interval = interval
        self.next_beat = now + interval * self.rng()
        self.awaiting_ack = False

    def stop(self) -> None:
        """The connection is gone: nothing is due until the next :meth:`start`."""
        self.interval = self.next_beat = None
        self.awaiting_ack = False

    @property
    def deadline(self) -> float | None:
        return self.next_beat

    def due(self, now: float) -> Beat | None:
        """What the loop must do at ``now`` (None: nothing yet)."""
        if self.next_beat is None or now < self.next_beat:
            return None
        return Beat.ZOMBIE if self.awaiting_ack else Beat.SEND

    def sent(self, now: float) -> None:
        """A heartbeat went out at ``now`` (due, or asked for by the server)."""
        self.awaiting_ack = True
        self.sent_at = now
        if self.interval is not None:
            self.next_beat = now + self.interval

    def acked(self, now: float) -> None:
        self.awaiting_ack = False
        if self.sent_at is not None:
            self.latency = now - self.sent_at
