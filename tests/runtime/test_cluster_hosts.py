"""The live-host registry against a real redis-server: hosts see each other, a host that
stops renewing drops out after its TTL, a clean leave is seen at once, and the shares
planned on that view (runtime/cluster/share.py) follow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from runtime.cluster.hosts import HostRegistry
from runtime.cluster.keys import FleetKeys
from runtime.cluster.leases import Hold, LeaseTable
from runtime.cluster.share import plan_share
from tests.redisserver import RedisServer


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as redis_server:
        yield redis_server


async def test_hosts_see_each_other_and_a_silent_one_drops_out(server: RedisServer) -> None:
    client = aioredis.Redis.from_url(server.url)
    try:
        keys = FleetKeys("bot")
        a = HostRegistry(client, keys, "a", ttl=10)
        b = HostRegistry(client, keys, "b", ttl=0.3)
        c = HostRegistry(client, keys, "c", ttl=10)
        await b.beat({"bus": "tcp://10.0.0.2:7000"})
        await c.beat()
        live = await a.beat()
        assert sorted(live) == ["a", "b", "c"] and live["b"]["bus"] == "tcp://10.0.0.2:7000"
        await c.leave()
        deadline = time.monotonic() + 10
        while sorted(live := await a.beat()) != ["a"]:  # b stopped renewing
            assert time.monotonic() < deadline, f"b never dropped out: {live}"
            await asyncio.sleep(0.1)
        await client.hset(keys.hosts, "junk", b"{not json")  # a hostile entry is pruned
        assert sorted(await a.beat()) == ["a"]
    finally:
        await client.aclose()


async def test_a_share_planned_on_the_leases_takes_only_free_shards(server: RedisServer) -> None:
    client = aioredis.Redis.from_url(server.url)
    try:
        keys = FleetKeys("bot")
        a, b = LeaseTable(client, keys, "a", 10), LeaseTable(client, keys, "b", 10)
        holds = {}
        for shard in range(6):  # b holds everything, then a joins
            hold = await b.acquire(shard)
            assert isinstance(hold, Hold)
            holds[shard] = hold
        owners = await a.owners(6)
        assert owners == {s: "b" for s in range(6)}
        assert plan_share("a", 6, ["a", "b"], owners).take == ()  # nothing free yet
        step = plan_share("b", 6, ["a", "b"], owners)
        assert step.release == (3, 4, 5)
        for shard in step.release:
            assert await b.release(holds[shard])
        step = plan_share("a", 6, ["a", "b"], await a.owners(6))
        assert step.take == (3, 4, 5)
        for shard in step.take:
            assert isinstance(await a.acquire(shard), Hold)
        assert await b.owners(6) == {0: "b", 1: "b", 2: "b", 3: "a", 4: "a", 5: "a"}
    finally:
        await client.aclose()
