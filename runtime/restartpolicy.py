"""What the supervisor does when a worker process exits, and when it is hung: pure decisions
over exit statuses, counts and times, so they are tested without processes. One policy for
shard and application processes (voice sessions have theirs in ``runtime.voicepolicy``)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from conn.backoff import backoff_delay
from ipc.exits import ExitStatus
from runtime.config import RestartConfig

__all__ = [
    "CRASH_FORGIVEN_AFTER",
    "CrashHistory",
    "Exit",
    "ExitDecision",
    "after_exit",
    "describe",
    "is_hung",
    "sleep_unless",
]

# A process that ran this long before it crashed starts the crash count afresh.
CRASH_FORGIVEN_AFTER = 30.0


class Exit(Enum):
    STOPPED = "stopped"  # we asked it to: done (or, for a restart, spawn again at once)
    RESPAWN = "respawn"  # a crash: spawn again after ``delay``
    FATAL = "fatal"  # a respawn would fail the same way: stop the fleet, saying why
    GIVE_UP = "give up"  # it keeps crashing (restart.max_restarts): leave it down, saying why


@dataclass(frozen=True)
class ExitDecision:
    next: Exit
    last_exit: str  # for status
    delay: float = 0.0
    crashes_in_a_row: int = 0
    reason: str = ""  # for FATAL: what the operator must fix


def describe(code: int) -> str:
    return f"exited with status {code}" if code >= 0 else f"killed by signal {-code}"


def after_exit(
    code: int,
    *,
    asked_to_stop: bool,
    crashes_in_a_row: int,
    ran_for: float,
    restart: RestartConfig,
    recent_crashes: int = 0,
    advice: str = "",
    rng: Callable[[], float] = random.random,
) -> ExitDecision:
    """The next step for a worker that exited with ``code`` after running ``ran_for``
    seconds, ``crashes_in_a_row`` crashes before it and ``recent_crashes`` (this one
    included) within ``restart.restart_window``. ``advice`` is what the process said about
    a fatal close before it exited."""
    if asked_to_stop:
        return ExitDecision(Exit.STOPPED, f"stopped (status {code})")
    if code == ExitStatus.FATAL:
        # A fatal close code means the token or the config is wrong for every shard.
        return ExitDecision(
            Exit.FATAL,
            "fatal close code",
            reason=advice or "fatal gateway close code (see its log)",
        )
    if code == ExitStatus.USAGE:
        # A refused command line, token or CA file is refused again on every respawn.
        return ExitDecision(
            Exit.FATAL,
            "usage error",
            reason="it refused its command line or environment (exit status 2; its log line "
            "says why: a missing token, or a discord.ca_file it cannot read)",
        )
    if recent_crashes > restart.max_restarts:
        return ExitDecision(
            Exit.GIVE_UP,
            describe(code),
            reason=f"{recent_crashes} crashes within {restart.restart_window:.0f}s, over "
            f"restart.max_restarts ({restart.max_restarts}); not respawned (its log says why)",
        )
    crashes = 1 if ran_for >= CRASH_FORGIVEN_AFTER else crashes_in_a_row + 1
    delay = backoff_delay(crashes, restart.backoff_initial, restart.backoff_max, rng)
    return ExitDecision(Exit.RESPAWN, describe(code), delay, crashes)


def is_hung(last_heard: float, now: float, hang_timeout: float) -> bool:
    """A worker that has said nothing (no status) for ``hang_timeout`` seconds is hung."""
    return now - last_heard > hang_timeout


@dataclass
class CrashHistory:
    """One worker's crashes: how many in a row, and when (within ``restart_window``)."""

    crashes_in_a_row: int = 0
    times: deque[float] = field(default_factory=deque)

    def after_exit(
        self,
        code: int,
        *,
        asked_to_stop: bool,
        ran_for: float,
        now: float,
        restart: RestartConfig,
        advice: str = "",
    ) -> ExitDecision:
        """Note this exit and decide (:func:`after_exit`) what comes next."""
        if not asked_to_stop and code not in (ExitStatus.USAGE, ExitStatus.FATAL):
            self.times.append(now)
        while self.times and now - self.times[0] > restart.restart_window:
            self.times.popleft()
        decision = after_exit(
            code,
            asked_to_stop=asked_to_stop,
            crashes_in_a_row=self.crashes_in_a_row,
            ran_for=ran_for,
            restart=restart,
            recent_crashes=len(self.times),
            advice=advice,
        )
        if decision.next is Exit.RESPAWN:
            self.crashes_in_a_row = decision.crashes_in_a_row
        return decision


async def sleep_unless(stopping: asyncio.Event, delay: float) -> None:
    """Wait ``delay`` seconds, or less if ``stopping`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay)
