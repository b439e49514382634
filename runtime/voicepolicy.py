"""What the supervisor does when a guild's voice session ends by itself, without I/O.

The voice process says how its session ended (``control.voice_ended``: an outcome from the
close-code table in ``voiceworker/gateway.py`` and the first cause); this module turns that
into the next step: rejoin after a jittered, growing delay; wait a little for a new voice
server (4014: moved, or the region changed); or give up and say why. Rejoins send op 4 on
the guild's shard, so they are also held to a per-shard budget that leaves the shard's
gateway send capacity (120 a minute) to everything else: the bot's own joins and leaves are
never refused (they count toward the budget), rejoins wait until it has room, so failing
sessions cannot delay healthy joins.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from conn.backoff import backoff_delay
from ipc.states import VoiceOutcome

__all__ = [
    "HEALTHY_AFTER",
    "JOIN_TIMEOUT",
    "MAX_REJOINS",
    "OP4_PER_MINUTE",
    "WAIT_FOR_SERVER",
    "Decision",
    "Next",
    "Op4Budget",
    "after_exit",
]

MAX_REJOINS = 5  # rejoins in a row, then the session is given up
REJOIN_BASE = 1.0  # seconds before the first rejoin; doubles, jittered, up to REJOIN_MAX
REJOIN_MAX = 60.0
HEALTHY_AFTER = 60.0  # a session connected this long starts the rejoin count afresh
WAIT_FOR_SERVER = 10.0  # after 4014: how long a new VOICE_SERVER_UPDATE may take
JOIN_TIMEOUT = 20.0  # op 4 sent: connected by then, or the join failed
OP4_PER_MINUTE = 20  # op 4s per shard per minute past which rejoins wait (joins never do)


class Next(Enum):
    REJOIN = "rejoin"
    WAIT_SERVER = "wait for a new server"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    next: Next
    delay: float  # seconds before the rejoin (REJOIN), or the wait's length (WAIT_SERVER)
    reason: str


# How the worker said its session ended -> what comes next.
_OUTCOMES: dict[VoiceOutcome, Next] = {
    VoiceOutcome.STOP: Next.FAIL,  # 4001, 4002, 4005, 4012, 4016, 4017, 4020-4022, bad data
    VoiceOutcome.REJOIN: Next.REJOIN,  # 4003, 4004, 4006, 4011, a second 4009, no server
    VoiceOutcome.RESUME: Next.REJOIN,  # resuming was given up inside the worker
    VoiceOutcome.REIDENTIFY: Next.REJOIN,
    VoiceOutcome.WAIT_SERVER: Next.WAIT_SERVER,  # 4014
}


def after_exit(
    outcome: VoiceOutcome | None,
    message: str,
    rejoins: int,
    rng: Callable[[], float] = random.random,
) -> Decision:
    """The next step for a session that ended with ``outcome`` after ``rejoins`` rejoins in
    a row. An outcome nobody knows (a crash) is retried like a rejoin."""
    step = Next.REJOIN if outcome is None else _OUTCOMES[outcome]
    if step is Next.FAIL:
        return Decision(Next.FAIL, 0.0, message)
    if step is Next.WAIT_SERVER:
        return Decision(Next.WAIT_SERVER, WAIT_FOR_SERVER, message)
    if rejoins >= MAX_REJOINS:
        return Decision(
            Next.FAIL, 0.0, f"{message} ({rejoins} rejoins in a row did not hold; giving up)"
        )
    return Decision(Next.REJOIN, backoff_delay(rejoins + 1, REJOIN_BASE, REJOIN_MAX, rng), message)


class Op4Budget:
    """Voice state updates per shard in the last 60 s: rejoins wait while there were
    ``per_minute`` or more."""

    def __init__(self, per_minute: int = OP4_PER_MINUTE, window: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window = window
        self._sent: dict[int, deque[float]] = {}

    def wait(self, shard: int, now: float) -> float:
        """Seconds until ``shard`` may send another op 4 (0: now)."""
        sent = self._sent.get(shard)
        if sent is None:
            return 0.0
        while sent and now - sent[0] >= self.window:
            sent.popleft()
        return 0.0 if len(sent) < self.per_minute else sent[0] + self.window - now

    def record(self, shard: int, now: float) -> None:
        """An op 4 went out on ``shard`` (a join or leave the bot asked for: never refused)."""
        self.wait(shard, now)  # drop what left the window
        self._sent.setdefault(shard, deque()).append(now)

    def take(self, shard: int, now: float) -> bool:
        """Spend one op 4 of ``shard``'s minute for a rejoin; False (nothing spent) when the
        minute is full."""
        if self.wait(shard, now) > 0:
            return False
        self.record(shard, now)
        return True
