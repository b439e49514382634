"""Blue/green resharding's decisions, without processes (docs/resharding.md): whether a
reshard may start and what it takes, and when the new generation is ready to switch to.
The supervisor carries them out: runtime/cutover.py switches the applications over."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ipc.requests import ReshardPlan
from ipc.states import ShardState
from ipc.status import ReshardRecord
from runtime.scheduler import startup_seconds

__all__ = [
    "GUILDS_WAIT",
    "ReshardTarget",
    "check_reshard",
    "plan_reply",
    "ready_to_switch",
    "record",
    "round_up",
    "shard_multiple",
]

GUILDS_WAIT = 15.0  # READY this long with guilds still unavailable: switch without them


def shard_multiple(configured: int | None, max_concurrency: int) -> int:
    """What the shard count must be a multiple of: ``shards.multiple_of``, else, for a bot
    Discord moved to large-bot sharding (its ``max_concurrency`` raised above 1), that."""
    if configured is not None:
        return configured
    return max(1, max_concurrency)


def round_up(count: int, multiple: int) -> int:
    return -(-count // multiple) * multiple


@dataclass(frozen=True)
class ReshardTarget:
    current: int
    target: int
    identifies: int
    remaining: int
    eta: float


def check_reshard(
    current: int,
    target: int,
    *,
    multiple: int,
    remaining: int,
    max_concurrency: int,
    interval: float,
    busy: str = "",
) -> ReshardTarget | str:
    """What resharding from ``current`` to ``target`` shards takes, or why it may not
    start (with the numbers)."""
    if busy:
        return busy
    if target == current:
        return f"the fleet runs {current} shards already"
    if target % multiple:
        above = round_up(target, multiple)
        return (
            f"{target} is not a multiple of {multiple}: a bot in large-bot sharding must run "
            f"a multiple, or Discord closes every shard with 4010 (try {above})"
        )
    if target > remaining:
        return (
            f"resharding to {target} shards needs {target} IDENTIFYs and Discord allows "
            f"{remaining} more today: running out would reset the bot's token; not started"
        )
    eta = startup_seconds(target, max_concurrency, interval)
    return ReshardTarget(current, target, target, remaining, eta)


def ready_to_switch(
    shards: Iterable[tuple[ShardState, int, float | None]], now: float
) -> tuple[int, bool]:
    """(shards ready, whether all are): READY with their guilds received, or READY for
    ``GUILDS_WAIT`` seconds (a guild Discord holds unavailable may never come). Each shard
    is (state, guilds pending, READY since)."""
    ready = total = 0
    for state, pending, since in shards:
        total += 1
        if state is ShardState.READY and (
            pending == 0 or (since is not None and now - since >= GUILDS_WAIT)
        ):
            ready += 1
    return ready, total > 0 and ready == total


def record(target: ReshardTarget, ready: int, state: str, problem: str = "") -> ReshardRecord:
    return ReshardRecord(target.current, target.target, ready, state, target.eta, problem)


def plan_reply(target: ReshardTarget, *, started: bool) -> ReshardPlan:
    """The reply to ``shardline.reshard``: what resharding to ``target`` takes."""
    return ReshardPlan(
        current=target.current,
        target=target.target,
        identifies=target.identifies,
        remaining=target.remaining,
        eta=target.eta,
        started=started,
    )
