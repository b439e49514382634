"""One host's part in a fleet: the decisions, with the shard processes behind an interface.

Every ``ttl / 3`` seconds (:meth:`Coordinator.keep`) the host renews its entry among the
live hosts and its leases, stops at once and without a word the shards whose lease is gone
(another host may be resuming them), hands over the shards its share no longer includes
(resumably: their checkpoint is written under the lease, then the lease released), and
takes free shards its share includes, starting each from the checkpoint kept in Redis.
Identify permits go through the fleet's schedule after a fencing check of the shard's hold.
When Redis does not answer, nothing identifies and nothing is taken or handed over; running
shards keep running, and :attr:`Coordinator.problem` says why for status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ipc.checkpoint import Checkpoint
from runtime.cluster.hosts import HostRegistry
from runtime.cluster.identify import ClusterUnavailable, FleetIdentifySchedule, GrantOutcome
from runtime.cluster.keys import FleetKeys
from runtime.cluster.leases import Hold, LeaseTable
from runtime.cluster.share import plan_share

__all__ = ["Coordinator", "ShardHost"]

log = logging.getLogger("shardline.supervisor")


class ShardHost(Protocol):
    """What the coordinator asks of this host's shard processes (the supervisor's fleet)."""

    def start_shard(self, shard: int, checkpoint: Checkpoint | None) -> None:
        """Start the shard's process: RESUME ``checkpoint`` if given, else IDENTIFY."""

    def kill_shard(self, shard: int) -> None:
        """The lease is gone: end the process at once, sending nothing more (SIGKILL)."""

    async def hand_over(self, shard: int) -> Checkpoint | None:
        """Close the shard resumably and return its final checkpoint (None if it had no
        session)."""

    def permit(self, shard: int) -> None:
        """The shard may IDENTIFY now."""

    def permit_resume(self, shard: int) -> None:
        """The shard may RESUME now."""


@dataclass
class _Owned:
    hold: Hold
    leaving: bool = False


class Coordinator:
    def __init__(
        self,
        redis: Any,
        fleet: str,
        host: str,
        shard_count: int,
        max_concurrency: int,
        shards: ShardHost,
        *,
        fixed: tuple[int, ...] | None = None,
        lease_ttl: float = 10.0,
        identify_interval: float = 5.0,
        info: Callable[[], dict[str, Any]] = dict,
        where: str = "Redis",
        on_hosts: Callable[[dict[str, dict[str, Any]]], Awaitable[None]] | None = None,
        space: str = "",
        generation: int = 0,
        hosts: HostRegistry | None = None,
    ) -> None:
        keys = FleetKeys(fleet, space)
        self.space = space  # the generation of shards this coordinator keeps (FleetKeys)
        self.host = host
        self.shard_count = shard_count
        self.shards = shards
        self.fixed = fixed
        self.lease_ttl = lease_ttl
        self.info = info
        self.on_hosts = on_hosts  # told the live hosts each turn, before shards move
        self.leases = LeaseTable(redis, keys, host, lease_ttl, where=where)
        self.hosts = hosts or HostRegistry(redis, keys, host, lease_ttl, where=where)
        self.schedule = FleetIdentifySchedule(
            redis,
            keys,
            max_concurrency,
            interval=identify_interval,
            where=where,
            generation=generation,
        )
        self.owned: dict[int, _Owned] = {}
        self.live_hosts: dict[str, dict[str, Any]] = {}
        self.problem = ""  # why the fleet cannot be coordinated now ("" when it can)
        self.owners: dict[int, str] = {}  # who held which shard at the last turn
        self.budget_left: int | None = None  # the fleet's identifies left, at the last turn
        self.budget_resets_at_ms: int | None = None
        self._identifying: dict[int, asyncio.Task[None]] = {}
        # After Redis was away, one turn takes nothing new: every host first takes back the
        # leases of the shards it still runs (they may have lapsed), so that no host mistakes
        # another's running shard for a free one.
        self._recovering = False

    # -- the periodic turn --------------------------------------------------------------

    async def keep(self) -> None:
        """One turn: say this host lives, then renew, drop what was lost, hand over and
        take toward the share."""
        try:
            self.live_hosts = await self.hosts.beat(self.info())
            if self.on_hosts is not None:  # e.g. the bus reaches every host before a take
                await self.on_hosts(self.live_hosts)
        except ClusterUnavailable as exc:
            self._unavailable(exc)
            return
        await self.turn(self.live_hosts)

    async def turn(self, live_hosts: dict[str, dict[str, Any]]) -> None:
        """The leases' part of a turn, among ``live_hosts`` (as the last beat saw them): a
        reshard's next generation takes its turn this way beside the running one's."""
        self.live_hosts = live_hosts
        try:
            holds = [o.hold for o in self.owned.values()]
            for lost, owner in await self.leases.renew(holds):
                await self._lost(lost, owner)
            if self._recovering:
                self._recovering = False
                self.owners = await self.leases.owners(self.shard_count)
            else:
                await self._move_toward_share()
            if self.problem:
                log.info(f"cluster: Redis answers again; coordinating ({self.problem})")
            self.problem = ""
        except ClusterUnavailable as exc:
            self._unavailable(exc)

    def _unavailable(self, exc: ClusterUnavailable) -> None:
        if not self.problem:
            log.warning(f"cluster: {exc}")
        self.problem = str(exc)
        self._recovering = True

    async def _lost(self, lost: Hold, owner: str) -> None:
        """A hold that renewing found gone. Lapsed with nobody else on it (Redis, or this
        host, was away longer than the TTL): take it again and keep the shard running.
        Another host's now: stop the shard at once, sending nothing more."""
        shard = lost.shard
        if not owner:
            again = await self.leases.acquire(shard)
            if isinstance(again, Hold):
                log.warning(
                    f"cluster: the lease on shard {shard} had lapsed with nobody else on it; "
                    "taken again, the shard keeps running",
                    extra={"fields": {"shard": str(shard)}},
                )
                self.owned[shard] = _Owned(again)
                return
            owner = again.owner
        self._stop_lost(shard, f"host {owner} holds it now (this host's lease ran out)")

    def _stop_lost(self, shard: int, why: str) -> None:
        """This host no longer holds ``shard``: its process ends at once, sending nothing."""
        log.warning(
            f"cluster: shard {shard}: {why}; stopping it without a word",
            extra={"fields": {"shard": str(shard)}},
        )
        self._forget(shard)
        self.shards.kill_shard(shard)

    async def _move_toward_share(self) -> None:
        owners = self.owners = await self.leases.owners(self.shard_count)
        self.budget_left, self.budget_resets_at_ms = await self.schedule.budget_and_reset()
        for shard, host in self._published_elsewhere().items():
            owners.setdefault(shard, host)  # running there, even if its lease lapsed
        if self.fixed is not None:
            wanted = [s for s in self.fixed if owners.get(s) != self.host]
            release: tuple[int, ...] = ()
        else:
            step = plan_share(
                self.host, self.shard_count, list(self.live_hosts), owners, max_step=8
            )
            wanted, release = list(step.take), step.release
        for shard in release:
            await self._hand_over(shard)
        for shard in wanted:
            if shard in self.owned:
                continue
            result = await self.leases.acquire(shard)
            if not isinstance(result, Hold):
                continue  # another host has it (for now): asked again next turn
            self.owned[shard] = _Owned(result)
            checkpoint = await self.leases.load_session(shard, self.shard_count)
            self.shards.start_shard(shard, checkpoint)

    def _published_elsewhere(self) -> dict[int, str]:
        """Shards of this generation other live hosts say they run (their entry's status
        records: ``shards`` for the generation it runs, ``next.shards`` for the one a
        reshard starts)."""
        running: dict[int, str] = {}
        for name, entry in self.live_hosts.items():
            records = entry.get("shards") if entry.get("generation", "") == self.space else None
            upcoming = entry.get("next")
            if isinstance(upcoming, dict) and upcoming.get("space") == self.space:
                records = upcoming.get("shards")
            if name == self.host or not isinstance(records, list):
                continue
            for record in records[: self.shard_count]:
                shard = record.get("id") if isinstance(record, dict) else None
                if type(shard) is int and 0 <= shard < self.shard_count:
                    running[shard] = name
        return running

    async def _hand_over(self, shard: int) -> None:
        owned = self.owned.get(shard)
        if owned is None or owned.leaving:
            return
        owned.leaving = True
        checkpoint = await self.shards.hand_over(shard)
        if checkpoint is not None:
            await self.leases.save_session(owned.hold, checkpoint)
        await self.leases.release(owned.hold)
        self._forget(shard)

    def _forget(self, shard: int) -> None:
        self.owned.pop(shard, None)
        task = self._identifying.pop(shard, None)
        if task is not None:
            task.cancel()

    # -- what the shards report ---------------------------------------------------------

    def identify_requested(self, shard: int) -> None:
        """The shard asks to IDENTIFY: its hold is checked, then its slot awaited."""
        if shard not in self.owned or shard in self._identifying:
            return
        task = asyncio.get_running_loop().create_task(self._identify(shard))
        self._identifying[shard] = task
        task.add_done_callback(lambda _: self._identifying.pop(shard, None))

    async def _identify(self, shard: int) -> None:
        while True:
            owned = self.owned.get(shard)
            if owned is None:
                return
            try:
                if not await self.leases.still_holds(owned.hold):
                    self._stop_lost(shard, "it asked to identify but this host's lease is gone")
                    return
                grant = await self.schedule.try_grant(shard)
            except ClusterUnavailable as exc:
                self.problem = str(exc)
                await asyncio.sleep(1.0)  # nothing identifies until Redis answers
                continue
            if grant.outcome is GrantOutcome.GRANTED:
                self.shards.permit(shard)
                return
            if grant.outcome is GrantOutcome.BUDGET_SPENT:
                self.problem = (
                    "the fleet's daily identify budget is spent: no shard identifies until "
                    "GET /gateway/bot says it reset"
                )
                await asyncio.sleep(5.0)
                continue
            await asyncio.sleep(grant.wait)

    async def resume_requested(self, shard: int) -> None:
        """The shard is about to RESUME: only while this host's hold is current (fencing).
        When Redis does not answer, it resumes anyway: a RESUME costs nothing and a running
        fleet must not stop for its store."""
        owned = self.owned.get(shard)
        if owned is None:
            self.shards.kill_shard(shard)  # no longer ours: it must not take the session back
            return
        try:
            holds = await self.leases.still_holds(owned.hold)
        except ClusterUnavailable as exc:
            self.problem = str(exc)
            holds = True
        if holds:
            self.shards.permit_resume(shard)
            return
        self._stop_lost(shard, "it asked to resume but this host's lease is gone")

    async def identify_sent(self, shard: int) -> None:
        """The shard's IDENTIFY went out: its bucket's next waits a full interval from now."""
        try:
            await self.schedule.sent(shard)
        except ClusterUnavailable as exc:
            self.problem = str(exc)

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """A shard's checkpoint: kept in Redis under its hold (refused if the hold is gone)."""
        owned = self.owned.get(checkpoint.shard)
        if owned is None:
            return
        try:
            if not await self.leases.save_session(owned.hold, checkpoint):
                log.warning(f"cluster: shard {checkpoint.shard}'s checkpoint refused: lease gone")
        except ClusterUnavailable as exc:
            self.problem = str(exc)

    async def leave(self) -> None:
        """A clean stop (after the shards closed and checkpointed): let everything go."""
        await self.release_all(also_host=True)

    async def release_all(self, *, also_host: bool = False) -> None:
        """Let every lease of this generation go (its shards are closed); with
        ``also_host``, this host's entry too (it leaves the fleet)."""
        for task in list(self._identifying.values()):
            task.cancel()
        try:
            for owned in list(self.owned.values()):
                await self.leases.release(owned.hold)
            if also_host:
                await self.hosts.leave()
        except ClusterUnavailable as exc:
            log.warning(f"cluster: leaving without Redis ({exc}); the leases will expire")
        self.owned.clear()
