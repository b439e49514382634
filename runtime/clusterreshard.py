"""This host's part in a reshard of a multi-host fleet (the protocol and its record in Redis:
runtime/cluster/reshard.py; docs/resharding.md explains it). After each of the host's turns
it follows the record: stage the next generation's events and start its share of the new
shards, switch the applications, close the old generation and run the new one; and when
this host is the fleet's driver, it moves the record on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ipc.events import Resharded
from ipc.messages import ErrorCode, ErrorReply, Reply
from ipc.requests import ReshardPlan
from ipc.status import ReshardRecord
from runtime.cluster.identify import ClusterUnavailable
from runtime.cluster.keys import FleetKeys
from runtime.cluster.reshard import (
    FleetReshard,
    Generation,
    ReshardStore,
    Step,
    all_staged,
    driver_step,
)
from runtime.clusterhost import ClusterHost
from runtime.config import Config
from runtime.reshard import ReshardTarget, check_reshard, plan_reply, record, shard_multiple
from runtime.scheduler import IdentifyScheduler, ScheduleView
from runtime.shardfleet import ShardFleet
from runtime.wiring import Wiring

__all__ = ["FleetResharding", "ReshardingHost"]

log = logging.getLogger("shardline.supervisor")


class ReshardingHost(Protocol):
    """What the supervisor lends a fleet reshard: its generations of shards on two slots
    (runtime/supervisor.py), its wiring, and where status and progress go."""

    config: Config
    plan: Any  # FleetPlan: max_concurrency, remaining
    scheduler: IdentifyScheduler
    wiring: Wiring
    shards: ShardFleet
    slot: str
    generations: dict[str, ShardFleet]
    reshard_status: ReshardRecord | None
    reshard_abort: asyncio.Event  # this host's new shard failed, or Ctrl-C reached it
    reshard_problem: str
    progress: Callable[[str], None]

    @property
    def other_slot(self) -> str: ...

    def new_generation(self, count: int, shard_ids: tuple[int, ...]) -> ShardFleet: ...

    def adopt_generation(self, fleet: ShardFleet, count: int) -> int: ...


@dataclass
class _Taking:
    """This host's part in the reshard under way."""

    record: FleetReshard
    fleet: ShardFleet  # its share of the new generation's shards
    host: ClusterHost  # their coordinator (leases in the generation's space)
    started: bool = False  # every host stages: its coordinator takes turns
    switched: bool = False
    problem: str = ""


class FleetResharding:
    def __init__(self, sup: ReshardingHost, cluster: ClusterHost) -> None:
        self.sup = sup
        self.cluster = cluster
        self.store: ReshardStore | None = None  # once the host joined the fleet
        self.taking: _Taking | None = None
        self._ready_since: dict[int, float] = {}  # the driver's view, for _ready_for
        self._ready_for = ""
        self._shown: tuple[str, int] = ("", -1)  # the last progress line's reshard, ready

    def _store(self) -> ReshardStore:
        if self.store is None:
            keys = FleetKeys(self.sup.config.cluster.fleet)
            self.store = ReshardStore(self.cluster.redis, keys, self.cluster.where)
        return self.store

    # -- what an operator asks (shardline reshard on any host) ------------------------------

    async def request(self, count: int, *, dry_run: bool) -> Reply:
        """Check a reshard of the whole fleet to ``count``; start it unless ``dry_run``."""
        sup, cluster = self.sup, self.cluster
        coordinator = cluster.coordinator
        if coordinator is None:
            return ErrorReply.of(ErrorCode.UNAVAILABLE, "this host has not joined its fleet yet")
        try:
            under_way = await self._store().read()
            left = await coordinator.schedule.budget()  # the fleet's, as of now
        except ClusterUnavailable as exc:
            return ErrorReply.of(ErrorCode.UNAVAILABLE, str(exc))
        busy = ""
        if sup.config.cluster.shards is not None:
            busy = "cluster.shards pins shards to this host: a fleet that does cannot reshard"
        elif under_way is not None and under_way.state != "aborted":
            busy = f"a reshard to {under_way.target} shards is under way"
        checked = check_reshard(
            cluster.shard_count,
            count,
            multiple=shard_multiple(sup.config.shards.multiple_of, sup.plan.max_concurrency),
            remaining=sup.plan.remaining if left is None else left,
            max_concurrency=sup.plan.max_concurrency,
            interval=sup.scheduler.interval,
            busy=busy,
        )
        if isinstance(checked, str):
            return ErrorReply.of(ErrorCode.UNAVAILABLE, checked)
        if not dry_run:
            try:
                if under_way is not None:  # aborted: the hosts drop it as a new one comes
                    await self._store().end(under_way)
                begun = await self._store().begin(checked.current, checked.target, checked.eta)
            except ClusterUnavailable as exc:
                return ErrorReply.of(ErrorCode.UNAVAILABLE, str(exc))
            if begun is None:
                return ErrorReply.of(ErrorCode.UNAVAILABLE, "another reshard just started")
            sup.reshard_status = record(checked, 0, "starting")
            sup.progress(
                f"reshard: the fleet's {checked.current} shards to {checked.target}; every host "
                f"starts its share of the new ones (identify bound {checked.eta:.0f}s)"
            )
        return plan_reply(checked, started=not dry_run)

    async def abort(self, why: str) -> Reply:
        """Call the fleet's reshard off (only before the switch)."""
        try:
            under_way = await self._store().read()
            if under_way is None or under_way.state == "aborted":
                return ErrorReply.of(ErrorCode.INVALID, "no reshard is under way")
            if under_way.state != "starting" or not await self._store().move(
                under_way, "aborted", why
            ):
                return ErrorReply.of(
                    ErrorCode.UNAVAILABLE,
                    "the fleet is switching to the new shards already: too late to call off",
                )
        except ClusterUnavailable as exc:
            return ErrorReply.of(ErrorCode.UNAVAILABLE, str(exc))
        return ReshardPlan(
            current=under_way.current,
            target=under_way.target,
            identifies=under_way.target,
            remaining=self.sup.plan.remaining,
            eta=under_way.eta,
            started=False,
        )

    # -- each turn ---------------------------------------------------------------------------

    async def step(self) -> None:
        """After the host's turn: follow the record; drive it when this host is the driver."""
        coordinator = self.cluster.coordinator
        if coordinator is None or coordinator.problem:
            return  # Redis is away: nothing moves (status says why)
        live = coordinator.live_hosts
        try:
            under_way = await self._store().read()
            step = None
            if under_way is not None and under_way.id != self._ready_for:
                self._ready_for = under_way.id
                self._ready_since.clear()
            if under_way is not None:
                step = driver_step(under_way, live, self._ready_since, time.monotonic())
                self._show(under_way, step)
            await self._follow(under_way, live)
            if under_way is not None and step is not None and self.cluster.host == min(live):
                await self._drive(under_way, step)
        except ClusterUnavailable as exc:
            log.warning(f"reshard: {exc}")

    def _show(self, under_way: FleetReshard, step: Step) -> None:
        """Status and progress lines, on every host (the CLI asks the one it reached)."""
        if under_way.state not in ("starting", "switching"):
            return
        self.sup.reshard_status = record(_target(under_way), step.ready, under_way.state)
        if (under_way.id, step.ready) != self._shown:
            self._shown = (under_way.id, step.ready)
            eta = max(0.0, under_way.eta - (time.time() - under_way.started))
            self.sup.progress(
                f"reshard: {step.ready} shards ready of {under_way.target}, ETA {eta:.0f}s"
            )

    async def _follow(self, under_way: FleetReshard | None, live: dict[str, Any]) -> None:
        taking = self.taking
        if taking is not None and (
            under_way is None or under_way.id != taking.record.id or under_way.state == "aborted"
        ):
            why = under_way.problem if under_way is not None else ""
            await self._drop(taking, why or "the reshard was called off")
            taking = None
        if (
            taking is None
            and under_way is not None
            and under_way.state in ("starting", "switching")
            and under_way.space != self.cluster.generation.space
        ):
            taking = await self._begin(under_way)
        if taking is None or under_way is None:
            return
        taking.record = under_way
        sup = self.sup
        if under_way.state == "starting" and sup.reshard_abort.is_set():
            sup.reshard_abort.clear()  # this host's new shard failed, or its own Ctrl-C
            taking.problem = sup.reshard_problem or "called off"
            await self._store().move(under_way, "aborted", taking.problem)
        bus = sup.wiring.bus
        if bus is not None and bus.cutover_overflowed and not taking.problem:
            taking.problem = (
                "the new generation's events outgrew bus.subscriber_buffer_bytes before it was "
                "ready"
            )
        if not taking.started and all_staged(under_way, live):
            taking.started = True
        assert taking.host.coordinator is not None
        if taking.started:
            await taking.host.coordinator.turn(live)
        if under_way.state in ("switching", "closing") and not taking.switched and bus is not None:
            await asyncio.to_thread(bus.reshard("switch").wait, 5.0)
            taking.switched = True
            sup.progress(f"reshard: this host's applications get the {under_way.target} shards")
        if under_way.state == "closing":
            await self._close_old(taking)
            return
        self.cluster.next_info = self._published(taking)

    def _published(self, taking: _Taking) -> dict[str, Any]:
        """This host's part, for the driver (in its entry: ``next``)."""
        return {
            "id": taking.record.id,
            "space": taking.record.space,
            "staged": True,
            "switched": taking.switched,
            "problem": taking.problem,
            "shards": [
                {
                    "id": shard,
                    "state": worker.state.value,
                    "pending": worker.report.guilds_pending if worker.report is not None else 1,
                }
                for shard, worker in taking.fleet.workers.items()
            ],
        }

    async def _begin(self, under_way: FleetReshard) -> _Taking:
        """Stage the new generation's events here, and ready its coordinator."""
        sup = self.sup
        fleet = sup.new_generation(under_way.target, ())
        upcoming = self.cluster.next_generation(
            fleet, Generation(under_way.target, under_way.number)
        )
        bus = sup.wiring.bus
        assert bus is not None
        tags = (self.cluster.generation.space.encode(), under_way.space.encode())
        limit = sup.config.bus.subscriber_buffer_bytes
        await asyncio.to_thread(bus.reshard("begin", sup.slot, limit, tags).wait, 5.0)
        sup.generations[sup.other_slot] = fleet
        sup.progress(
            f"reshard: this host takes its share of {under_way.target} new shards once every "
            "host stages their events"
        )
        self.taking = _Taking(under_way, fleet, upcoming)
        self.cluster.next_info = self._published(self.taking)
        return self.taking

    async def _drop(self, taking: _Taking, why: str) -> None:
        """The reshard is off: the new generation's shards go, the running ones stay."""
        sup = self.sup
        self.taking = None
        self.cluster.next_info = None
        bus = sup.wiring.bus
        assert bus is not None and taking.host.coordinator is not None
        await asyncio.to_thread(bus.reshard("abort").wait, 5.0)
        taking.fleet.identify_gate = None
        await taking.fleet.shutdown()
        await taking.host.coordinator.release_all()
        sup.generations.pop(sup.other_slot, None)
        if isinstance(taking.fleet.scheduler, ScheduleView):
            taking.fleet.scheduler.close(list(taking.fleet.workers))
        await asyncio.to_thread(bus.reshard("finish").wait, 5.0)
        sup.reshard_status = record(_target(taking.record), 0, "aborted", why)
        sup.progress(f"reshard to {taking.record.target} aborted: {why}")

    async def _close_old(self, taking: _Taking) -> None:
        """Every host switched: the new generation is this host's fleet; the old one closes
        (its leases let go, its checkpoints no longer kept: nobody resumes them)."""
        sup, cluster = self.sup, self.cluster
        old, old_coordinator = sup.shards, cluster.coordinator
        assert old_coordinator is not None
        old_slot = sup.slot
        old.identify_gate = None
        cluster.adopt(taking.host)
        old_count = sup.adopt_generation(taking.fleet, taking.record.target)
        self.taking = None
        await old.shutdown()
        await old_coordinator.release_all()
        sup.generations.pop(old_slot, None)
        if isinstance(old.scheduler, ScheduleView):
            old.scheduler.close(list(old.workers))
        bus = sup.wiring.bus
        assert bus is not None
        await asyncio.to_thread(bus.reshard("finish").wait, 5.0)
        sup.reshard_status = record(_target(taking.record), taking.record.target, "done")
        sup.progress(f"reshard: generation of {old_count} closed on this host")

    async def shutdown(self) -> None:
        """The supervisor stops during a reshard: this host's new shards close resumably
        (their checkpoints in Redis) and their leases go, so that the other hosts take and
        resume them; the reshard goes on without this host."""
        taking, self.taking = self.taking, None
        if taking is None:
            return
        assert taking.host.coordinator is not None
        await taking.fleet.shutdown()
        await taking.host.settle()  # their final checkpoints written under the leases
        await taking.host.coordinator.release_all()

    # -- the driver ---------------------------------------------------------------------------

    async def _drive(self, under_way: FleetReshard, step: Step) -> None:
        """The driver moves the record on as the hosts' entries allow (runtime/cluster)."""
        if step.state == "end":
            await self._store().end(under_way)
        elif step.state == "closing":
            generation = Generation(under_way.target, under_way.number)
            if await self._store().move(under_way, "closing", generation=generation):
                self.sup.wiring.publish(
                    Resharded(old_count=under_way.current, new_count=under_way.target)
                )
                self.sup.progress(
                    f"reshard: every host switched to {under_way.target} shards (from "
                    f"{under_way.current}); the old ones close"
                )
        elif step.state:
            await self._store().move(under_way, step.state, step.problem)


def _target(under_way: FleetReshard) -> ReshardTarget:
    return ReshardTarget(under_way.current, under_way.target, under_way.target, 0, under_way.eta)
