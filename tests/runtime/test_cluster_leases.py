"""Shard leases against a real redis-server: one owner per shard, renewals, expiry and
takeover, the fencing check, and checkpoints written only under a current hold."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from ipc.checkpoint import Checkpoint
from runtime.cluster.keys import FleetKeys
from runtime.cluster.leases import Hold, LeaseTable, Taken
from tests.redisserver import RedisServer


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as redis_server:
        yield redis_server


@asynccontextmanager
async def host(server: RedisServer, name: str, ttl: float = 10.0) -> AsyncIterator[LeaseTable]:
    client = aioredis.Redis.from_url(server.url)
    try:
        yield LeaseTable(client, FleetKeys("bot"), name, ttl)
    finally:
        await client.aclose()


def checkpoint(shard: int, seq: int) -> Checkpoint:
    return Checkpoint(shard, 4, "session-" + str(shard), seq, "wss://gateway.discord.gg")


async def test_one_owner_per_shard_and_renewing_keeps_it(server: RedisServer) -> None:
    async with host(server, "a") as a, host(server, "b") as b:
        results = await asyncio.gather(*(t.acquire(s) for s in range(4) for t in (a, b)))
        owners = {r.shard: r.host for r in results if isinstance(r, Hold)}
        assert sorted(owners) == [0, 1, 2, 3]  # every shard held, each by exactly one host
        taken = [r for r in results if isinstance(r, Taken)]
        assert len(taken) == 4 and all(t.owner == owners[t.shard] and t.ttl > 0 for t in taken)
        holds = [r for r in results if isinstance(r, Hold)]
        tables = {"a": a, "b": b}
        for hold in holds:
            table = tables[hold.host]
            assert await table.renew([hold]) == []
            assert await table.acquire(hold.shard) == hold  # our own hold, the same fence


async def test_an_expired_hold_is_taken_over_with_a_new_fence(server: RedisServer) -> None:
    async with host(server, "paused", ttl=0.3) as paused, host(server, "live", ttl=5) as live:
        old = await paused.acquire(0)
        assert isinstance(old, Hold) and await paused.still_holds(old)
        deadline = time.monotonic() + 10
        while not isinstance(new := await live.acquire(0), Hold):
            assert time.monotonic() < deadline, "the expired lease was never taken over"
            await asyncio.sleep(new.ttl)
        assert new.fence > old.fence
        # the paused host comes back: every check says no, and it learns it lost the shard
        assert not await paused.still_holds(old)
        assert await paused.renew([old]) == [(old, "live")]
        assert not await paused.release(old)  # and cannot take it from the new owner
        assert await live.still_holds(new)


async def test_the_fence_tells_an_old_hold_from_a_new_one_of_the_same_host(
    server: RedisServer,
) -> None:
    async with host(server, "a", ttl=5) as a:
        first = await a.acquire(1)
        assert isinstance(first, Hold) and await a.release(first)
        second = await a.acquire(1)
        assert isinstance(second, Hold) and second.fence > first.fence
        assert not await a.still_holds(first) and await a.still_holds(second)


async def test_checkpoints_are_written_only_under_a_current_hold(server: RedisServer) -> None:
    async with host(server, "a", ttl=5) as a, host(server, "b", ttl=5) as b:
        hold = await a.acquire(2)
        assert isinstance(hold, Hold)
        assert await a.save_session(hold, checkpoint(2, 10))
        assert await b.load_session(2, 4) == checkpoint(2, 10)  # any host can resume it
        assert await b.load_session(2, 8) is None  # another shard count: not this session
        assert await a.release(hold)
        new = await b.acquire(2)
        assert isinstance(new, Hold)
        assert not await a.save_session(hold, checkpoint(2, 5))  # stale: refused
        assert await b.save_session(new, checkpoint(2, 11))
        assert (await a.load_session(2, 4)) == checkpoint(2, 11)


async def test_a_hostile_checkpoint_in_redis_is_ignored(server: RedisServer) -> None:
    async with host(server, "a") as a:
        keys = FleetKeys("bot")
        for junk in (b"not json", b"[1,2]", b'{"shard": 3}', b'{"shard":3,"shard_count":4,'
                     b'"session_id":"s","seq":1,"resume_url":"http://evil/"}'):  # fmt: skip
            await a.redis.set(keys.session(3), junk)
            assert await a.load_session(3, 4) is None
