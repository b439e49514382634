"""A host's fleet decisions against a real redis-server, its shard processes replaced by a
recorder: fixed and automatic shares, takeover with the checkpoint after a host dies, a
paused host stopping what it lost without a word, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import redis.asyncio as aioredis

from ipc.checkpoint import Checkpoint
from runtime.cluster.coordinator import Coordinator
from tests.redisserver import RedisServer
from tests.shards.helpers import eventually

SHARDS = 6


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as redis_server:
        yield redis_server


def checkpoint(shard: int, seq: int) -> Checkpoint:
    return Checkpoint(shard, SHARDS, f"session-{shard}", seq, "wss://gateway.discord.gg")


class Recorder:
    """A host's shard processes, as the coordinator sees them."""

    def __init__(self) -> None:
        self.running: dict[int, Checkpoint | None] = {}
        self.started: list[tuple[int, Checkpoint | None]] = []
        self.killed: list[int] = []
        self.permits: list[int] = []
        self.resumes: list[int] = []

    def start_shard(self, shard: int, checkpoint: Checkpoint | None) -> None:
        assert shard not in self.running
        self.running[shard] = checkpoint
        self.started.append((shard, checkpoint))

    def kill_shard(self, shard: int) -> None:
        self.running.pop(shard, None)
        self.killed.append(shard)

    async def hand_over(self, shard: int) -> Checkpoint | None:
        self.running.pop(shard)
        return checkpoint(shard, 100 + shard)

    def permit(self, shard: int) -> None:
        self.permits.append(shard)

    def permit_resume(self, shard: int) -> None:
        self.resumes.append(shard)


@asynccontextmanager
async def host(
    server: RedisServer, name: str, **options: object
) -> AsyncIterator[tuple[Coordinator, Recorder]]:
    client = aioredis.Redis.from_url(server.url)
    shards = Recorder()
    options.setdefault("lease_ttl", 5.0)
    coordinator = Coordinator(client, "bot", name, SHARDS, 2, shards, **options)  # type: ignore[arg-type]
    try:
        yield coordinator, shards
    finally:
        await client.aclose()


def no_shard_runs_twice(*recorders: Recorder) -> None:
    seen: set[int] = set()
    for recorder in recorders:
        assert not seen & set(recorder.running), "a shard runs on two hosts"
        seen |= set(recorder.running)


async def turns_until(
    coordinator: Coordinator, done: Callable[[], bool], timeout: float = 20
) -> None:
    """Run ``coordinator``'s turns until ``done()``: what changes between them is time (a
    lease lapsing in Redis), which no event announces; a turn every 0.1 s, as a host's
    would be, bounded by ``timeout``."""
    async with asyncio.timeout(timeout):
        while not done():
            await coordinator.keep()
            if not done():
                await asyncio.sleep(0.1)


async def test_fixed_ranges_start_their_shards_and_identify_through_the_schedule(
    server: RedisServer,
) -> None:
    async with AsyncExitStack() as stack:
        a, sa = await stack.enter_async_context(host(server, "a", fixed=(0, 1, 2)))
        b, sb = await stack.enter_async_context(host(server, "b", fixed=(3, 4, 5)))
        await asyncio.gather(a.keep(), b.keep())
        assert sorted(sa.running) == [0, 1, 2] and sorted(sb.running) == [3, 4, 5]
        assert all(cp is None for cp in [*sa.running.values(), *sb.running.values()])
        a.schedule.interval_ms = b.schedule.interval_ms = 50  # a fast gateway, for the test
        for coordinator, shards in ((a, (0, 1, 2)), (b, (3, 4, 5))):
            for shard in shards:
                coordinator.identify_requested(shard)
        await eventually(lambda: len(sa.permits) + len(sb.permits) >= SHARDS, timeout=20)
        assert sorted(sa.permits + sb.permits) == list(range(SHARDS))


async def test_automatic_shares_settle_within_one_and_never_overlap(server: RedisServer) -> None:
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(host(server, n)) for n in ("a", "b", "c")]
        for _ in range(6):
            await asyncio.gather(*(c.keep() for c, _ in hosts))
            no_shard_runs_twice(*(r for _, r in hosts))
        assert sorted(len(r.running) for _, r in hosts) == [2, 2, 2]


async def test_a_dead_hosts_shards_are_resumed_elsewhere_from_their_checkpoints(
    server: RedisServer,
) -> None:
    async with host(server, "survivor") as (survivor, kept):
        async with host(server, "doomed", lease_ttl=0.4) as (doomed, lost):
            for _ in range(3):
                await asyncio.gather(survivor.keep(), doomed.keep())
            assert len(lost.running) == 3
            for shard in lost.running:
                await doomed.checkpoint(checkpoint(shard, 40 + shard))
            gone = sorted(lost.running)
        # the doomed host is killed: it renews nothing more
        await turns_until(survivor, lambda: sorted(kept.running) == list(range(SHARDS)))
        for shard in gone:
            assert kept.running[shard] == checkpoint(
                shard, 40 + shard
            )  # resumed, not re-identified


async def test_a_paused_host_stops_what_it_lost_and_the_fleet_ends_with_one_owner(
    server: RedisServer,
) -> None:
    async with host(server, "a", lease_ttl=0.5) as (a, sa), host(server, "b") as (b, sb):
        for _ in range(3):
            await asyncio.gather(a.keep(), b.keep())
        held_by_a = sorted(sa.running)
        assert len(held_by_a) == 3
        # a is paused (SIGSTOP) past its lease: b alone keeps the fleet going
        await turns_until(b, lambda: sorted(sb.running) == list(range(SHARDS)))
        await a.keep()  # a is continued: its leases are gone
        assert sorted(sa.killed) == held_by_a  # stopped without a word, not handed over
        for _ in range(6):
            await asyncio.gather(a.keep(), b.keep())
            no_shard_runs_twice(sa, sb)
        assert sorted([*sa.running, *sb.running]) == list(range(SHARDS))
        assert sorted([len(sa.running), len(sb.running)]) == [3, 3]


async def test_without_redis_nothing_identifies_and_running_shards_are_kept(
    server: RedisServer,
) -> None:
    async with host(server, "a", fixed=(0,)) as (a, sa):
        await a.keep()
        assert list(sa.running) == [0] and a.problem == ""
        server.stop()
        await a.keep()
        assert "unreachable" in a.problem and list(sa.running) == [0] and sa.killed == []
        a.identify_requested(0)
        await asyncio.sleep(0.3)  # the request is held, not granted, while Redis is away
        assert sa.permits == []
        server.start()  # back, empty (nothing persisted): the fleet converges
        await turns_until(a, lambda: bool(sa.permits))
        assert a.problem == "" and sa.permits == [0]
        assert sa.killed == [] and list(sa.running) == [0]  # its lapsed lease was taken again


async def test_a_resume_goes_out_only_under_a_current_hold(server: RedisServer) -> None:
    async with host(server, "a", fixed=(0, 1), lease_ttl=0.5) as (a, sa):
        async with host(server, "b", fixed=(0, 1)) as (b, sb):
            await a.keep()
            await a.resume_requested(0)
            assert sa.resumes == [0]  # still ours: resume
            # a is paused past its lease; b takes the shards
            await turns_until(b, lambda: sorted(sb.running) == [0, 1])
            await a.resume_requested(1)  # a's shard 1 reconnects before a's next turn
            assert sa.resumes == [0] and 1 in sa.killed  # refused, and stopped without a word
            server.stop()  # without Redis there is no saying: a RESUME costs nothing, it goes
            await b.resume_requested(0)
            assert sb.resumes == [0] and "unreachable" in b.problem
