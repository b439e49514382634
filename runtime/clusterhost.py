"""The supervisor's part in a multi-host fleet (``[cluster]``): joins the fleet's Redis,
runs the host's coordinator every ``lease_ttl / 3`` seconds, and carries its decisions to
the shard processes (start, kill, hand over, permit) and the shards' identifies and
checkpoints to it. docs/cluster.md describes the fleet."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ipc.checkpoint import Checkpoint
from ipc.control import IdentifyPermit, ResumePermit
from ipc.status import AppRecord, BudgetRecord, HostRecord, ShardRecord
from runtime.cluster.coordinator import Coordinator
from runtime.cluster.fleet import FleetClaimError, claim_fleet, connect
from runtime.cluster.hosts import HostRegistry
from runtime.cluster.identify import ClusterUnavailable
from runtime.cluster.keys import FleetKeys
from runtime.cluster.reshard import Generation, ReshardStore
from runtime.config import ClusterConfig, redact_url
from runtime.shardfleet import ShardFleet
from runtime.wiring import StartupError

__all__ = ["ClusterHost"]

log = logging.getLogger("shardline.supervisor")
MAX_PUBLISHED_APPS = 256  # application processes read from another host's entry


class ClusterHost:
    def __init__(
        self,
        config: ClusterConfig,
        shards: ShardFleet,
        *,
        token: str,
        shard_count: int,
        max_concurrency: int,
        remaining: int,
        reset_after_ms: int,
        identify_interval: float,
        about: Callable[[], dict[str, Any]] = dict,
        meet: Callable[[dict[str, dict[str, Any]]], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.fleet = shards
        self.token = token
        self.shard_count = shard_count
        self.max_concurrency = max_concurrency
        self.remaining = remaining
        self.reset_after_ms = reset_after_ms
        self.identify_interval = identify_interval
        self.about = about  # what other hosts need to reach this one, published each turn
        self.meet = meet  # told the live hosts each turn, before any shard moves
        # Each shard's latest checkpoint, held back one report: Redis gets the one before,
        # so that a host that takes the shard over after a crash resumes from a point the
        # applications had surely received, and replays the rest (deduplicated by seq).
        self._reported: dict[int, Checkpoint] = {}
        self.host = config.host_name()
        self.redis: Any = None
        self.coordinator: Coordinator | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.generation = Generation(shard_count, 0)  # the one this host runs
        self.next_info: dict[str, Any] | None = None  # its part in a reshard, published
        self.after_turn: Callable[[], Awaitable[None]] | None = None  # e.g. a reshard's step

    # -- joining and leaving ------------------------------------------------------------

    async def start(self) -> None:
        """Reach Redis, claim the fleet's name, publish Discord's budget; StartupError names
        what is wrong (nothing is written when the name belongs to another bot)."""
        keys = FleetKeys(self.config.fleet)
        try:
            self.redis = await connect(self.config)
            await claim_fleet(self.redis, keys, self.token)
            resharded = await ReshardStore(self.redis, keys, self.where).generation()
        except (ClusterUnavailable, FleetClaimError) as exc:
            await self._close_redis()
            raise StartupError(str(exc)) from None
        if resharded is not None:  # the fleet was resharded: its count, not the config's
            self.generation = resharded
            self.shard_count = resharded.count
        self.coordinator = self._coordinator(self.generation, None)
        resets_at_ms = int(time.time() * 1000) + self.reset_after_ms
        try:
            await self.coordinator.schedule.set_budget(self.remaining, resets_at_ms)
        except ClusterUnavailable as exc:
            await self._close_redis()
            raise StartupError(str(exc)) from None
        self.fleet.identify_gate = self

    @property
    def where(self) -> str:
        return f"Redis at {redact_url(self.config.redis_url)}"

    def _coordinator(self, generation: Generation, hosts: HostRegistry | None) -> Coordinator:
        return Coordinator(
            self.redis,
            self.config.fleet,
            self.host,
            generation.count,
            self.max_concurrency,
            self,
            fixed=self.config.shards,
            lease_ttl=self.config.lease_ttl,
            identify_interval=self.identify_interval,
            info=self._published,
            where=self.where,
            on_hosts=self.meet,
            space=generation.space,
            generation=generation.number,
            hosts=hosts,
        )

    def next_generation(self, fleet: ShardFleet, generation: Generation) -> ClusterHost:
        """This host's part in a reshard's next generation: ``fleet``'s shards under their
        own coordinator (their leases in the generation's space), beside the running one,
        sharing Redis, the host's entry and its turns."""
        assert self.coordinator is not None
        upcoming = ClusterHost(
            self.config,
            fleet,
            token=self.token,
            shard_count=generation.count,
            max_concurrency=self.max_concurrency,
            remaining=self.remaining,
            reset_after_ms=self.reset_after_ms,
            identify_interval=self.identify_interval,
        )
        upcoming.redis = self.redis
        upcoming._tasks = self._tasks  # stopped with this host's
        upcoming.generation = generation
        upcoming.coordinator = self._coordinator(generation, self.coordinator.hosts)
        upcoming.coordinator.shards = upcoming
        upcoming.coordinator.fixed = None  # cluster.shards pins the first generation only
        fleet.identify_gate = upcoming
        return upcoming

    def adopt(self, upcoming: ClusterHost) -> None:
        """The reshard is over: the next generation is the one this host runs."""
        assert upcoming.coordinator is not None
        self.fleet = upcoming.fleet
        self.coordinator = upcoming.coordinator
        self.generation = upcoming.generation
        self.shard_count = upcoming.shard_count
        self.next_info = None

    async def run(self, stopping: asyncio.Event) -> None:
        """The coordinator's turn every third of the lease TTL, until the fleet stops."""
        assert self.coordinator is not None
        every = self.config.lease_ttl / 3
        while not stopping.is_set():
            await self.coordinator.keep()
            if self.after_turn is not None:
                await self.after_turn()
            try:
                await asyncio.wait_for(stopping.wait(), every)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """After the shards closed resumably: their checkpoints written, the leases and this
        host's entry released, Redis closed."""
        await self.settle()
        for task in list(self._tasks):
            task.cancel()
        if self.coordinator is not None:
            await self.coordinator.leave()
        await self._close_redis()

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait (a while) for what is under way with Redis: the last checkpoints written."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def close(self) -> None:
        """The supervisor is ending on an error: close Redis (the leases expire by
        themselves)."""
        for task in list(self._tasks):
            task.cancel()
        await self._close_redis()

    async def _close_redis(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    def _own(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.error(f"cluster: {what} failed", exc_info=finished.exception())

        task.add_done_callback(done)

    # -- the fleet as status shows it ----------------------------------------------------

    def _published(self) -> dict[str, Any]:
        """What this host tells the others each turn: its shards' status records, so that
        `shardline status` on any host shows the whole fleet."""
        now = time.monotonic()
        published = {
            **self.about(),
            "generation": self.generation.space,
            "shards": [record.to_json() for record in self.fleet.records(now)],
        }
        if self.next_info is not None:
            published["next"] = self.next_info
        return published

    def view(self) -> tuple[list[HostRecord], list[ShardRecord], BudgetRecord | None]:
        """The fleet at the coordinator's last turn: every host, the other hosts' shards
        (as they published them), and the fleet's budget."""
        coordinator = self.coordinator
        if coordinator is None:
            return [], [], None
        live = coordinator.live_hosts
        now_ms = coordinator.hosts.now_ms
        ttl_ms = coordinator.hosts.ttl_ms
        held: dict[str, list[int]] = {}
        for shard, owner in sorted(coordinator.owners.items()):
            held.setdefault(owner, []).append(shard)
        hosts = []
        for name in sorted(set(live) | set(held)):
            entry = live.get(name, {})
            expires = entry.get("expires_ms")
            age = None
            if isinstance(expires, int | float) and now_ms:
                age = round(max(0.0, (now_ms - (expires - ttl_ms)) / 1000), 1)
            hosts.append(HostRecord(name, name in live, held.get(name, []), age))
        remote: list[ShardRecord] = []
        for name, entry in live.items():
            if name == self.host or not isinstance(entry.get("shards"), list):
                continue
            for raw in entry["shards"][: self.shard_count]:
                try:
                    record = ShardRecord.from_json(raw)
                except (ValueError, TypeError):
                    continue  # another host's report is outside input: a bad one is left out
                remote.append(dataclasses.replace(record, host=name, pid=None))
        budget = BudgetRecord(
            coordinator.budget_left,
            None
            if coordinator.budget_resets_at_ms is None
            else coordinator.budget_resets_at_ms / 1000,
        )
        return hosts, remote, budget

    def remote_apps(self) -> list[AppRecord]:
        """The other hosts' application processes, as they published them at the last turn."""
        coordinator = self.coordinator
        if coordinator is None:
            return []
        out: list[AppRecord] = []
        for name, entry in coordinator.live_hosts.items():
            records = entry.get("app_records")
            if name == self.host or not isinstance(records, list):
                continue
            for raw in records[:MAX_PUBLISHED_APPS]:
                try:
                    record = AppRecord.from_json(raw)
                except (ValueError, TypeError):
                    continue  # another host's report is outside input: a bad one is left out
                out.append(dataclasses.replace(record, host=name))
        return out

    # -- the coordinator's decisions, carried to the shard processes (ShardHost) ----------

    def start_shard(self, shard: int, checkpoint: Checkpoint | None) -> None:
        how = "resuming its session" if checkpoint is not None else "identifying"
        log.info(f"cluster: this host holds shard {shard} now; {how}")
        self._reported.pop(shard, None)
        if checkpoint is not None:
            self._reported[shard] = checkpoint
        worker = self.fleet.add(shard, checkpoint)
        self._own(self.fleet.keep_alive(worker), f"shard {shard}")

    def kill_shard(self, shard: int) -> None:
        self.fleet.drop(shard)

    async def hand_over(self, shard: int) -> Checkpoint | None:
        return await self.fleet.hand_over(shard)

    def permit(self, shard: int) -> None:
        self.fleet.send(f"shard:{shard}", IdentifyPermit())  # on its generation's socket

    def permit_resume(self, shard: int) -> None:
        self.fleet.send(f"shard:{shard}", ResumePermit())

    # -- the shards' identifies and checkpoints, carried to the coordinator (IdentifyGate) -

    def identify_requested(self, shard: int) -> None:
        if self.coordinator is not None:
            self.coordinator.identify_requested(shard)

    def identify_sent(self, shard: int) -> None:
        if self.coordinator is not None:
            self._own(self.coordinator.identify_sent(shard), f"identify mark of shard {shard}")

    def resume_requested(self, shard: int) -> None:
        if self.coordinator is not None:
            self._own(self.coordinator.resume_requested(shard), f"resume check of shard {shard}")

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        previous = self._reported.get(checkpoint.shard)
        self._reported[checkpoint.shard] = checkpoint
        if previous is not None and previous.session_id == checkpoint.session_id:
            checkpoint = previous  # held back one report (see __init__)
        if self.coordinator is not None:
            self._own(self.coordinator.checkpoint(checkpoint), "checkpoint")

    @property
    def problem(self) -> str:
        return self.coordinator.problem if self.coordinator is not None else ""
