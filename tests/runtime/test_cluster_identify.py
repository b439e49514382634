"""The fleet's identify schedule against a real redis-server: one slot per bucket per
interval whoever asks, lower ids first across hosts, a dead host's places lapse, one daily
budget, and an unreachable Redis refuses every identify."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from runtime.cluster.identify import (
    ClusterUnavailable,
    FleetIdentifySchedule,
    GrantOutcome,
)
from runtime.cluster.keys import FleetKeys
from tests.redisserver import RedisServer


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as redis_server:
        yield redis_server


@asynccontextmanager
async def host(
    server: RedisServer, max_concurrency: int = 1, **options: float
) -> AsyncIterator[FleetIdentifySchedule]:
    """One host's view of the schedule: its own connection to the same Redis."""
    client = aioredis.Redis.from_url(server.url)
    try:
        yield FleetIdentifySchedule(client, FleetKeys("bot"), max_concurrency, **options)
    finally:
        await client.aclose()


async def test_two_hosts_never_take_the_same_slot(server: RedisServer) -> None:
    async with host(server, interval=5.0) as a, host(server, interval=5.0) as b:
        first, second = await asyncio.gather(a.try_grant(0), b.try_grant(1))
        outcomes = sorted([first.outcome.value, second.outcome.value])
        assert outcomes == ["granted", "wait"]
        waiting = second if second.outcome is GrantOutcome.WAIT else first
        assert waiting.wait > 0.2  # told to come back later, not spin
        # a hundred asks from both hosts at once: still nobody else gets the bucket
        asks = [h.try_grant(s) for s in range(2, 52) for h in (a, b)]
        assert all(g.outcome is GrantOutcome.WAIT for g in await asyncio.gather(*asks))


async def test_buckets_are_independent(server: RedisServer) -> None:
    async with host(server, max_concurrency=4) as a, host(server, max_concurrency=4) as b:
        grants = await asyncio.gather(a.try_grant(0), b.try_grant(1), a.try_grant(2))
        assert all(g.outcome is GrantOutcome.GRANTED for g in grants)
        assert (await b.try_grant(4)).outcome is GrantOutcome.WAIT  # bucket 0 again


async def test_lower_ids_go_first_across_hosts(server: RedisServer) -> None:
    async with host(server) as a, host(server) as b:
        await a.join([5, 3])
        await b.join([4, 1])
        assert (await a.try_grant(3)).outcome is GrantOutcome.WAIT  # 1 is waiting on b
        assert (await b.try_grant(1)).outcome is GrantOutcome.GRANTED


async def test_a_dead_hosts_places_lapse(server: RedisServer) -> None:
    async with host(server, interval=0.05, margin=0.0, place_ttl=0.3) as alive:
        async with host(server, place_ttl=0.3) as doomed:
            await doomed.join([0])  # then the host dies: it never asks again
        assert (await alive.try_grant(1)).outcome is GrantOutcome.WAIT
        deadline = time.monotonic() + 10
        while (grant := await alive.try_grant(1)).outcome is not GrantOutcome.GRANTED:
            assert time.monotonic() < deadline, "the dead host's place never lapsed"
            await asyncio.sleep(grant.wait)
        assert await alive.redis.zrange(alive.keys.identify_queue(0), 0, -1) == []


async def test_one_budget_for_the_fleet(server: RedisServer) -> None:
    async with host(server, max_concurrency=8) as a, host(server, max_concurrency=8) as b:
        await a.set_budget(2, resets_at_ms=0)
        assert (await a.try_grant(0)).budget_left == 1
        assert (await b.try_grant(1)).budget_left == 0
        refused = await b.try_grant(2)
        assert refused.outcome is GrantOutcome.BUDGET_SPENT
        assert await a.budget() == 0
        await b.set_budget(1000, resets_at_ms=0)  # GET /gateway/bot says the day reset
        assert (await a.try_grant(2)).outcome is GrantOutcome.GRANTED


async def test_an_unreachable_redis_refuses_every_identify(server: RedisServer) -> None:
    async with host(server) as a:
        assert (await a.try_grant(0)).outcome is GrantOutcome.GRANTED
        server.stop()
        with pytest.raises(ClusterUnavailable, match="Redis"):
            await a.try_grant(1)
        server.start()
        assert (await a.try_grant(1)).outcome is GrantOutcome.GRANTED  # back: it converges


async def test_the_sent_mark_spaces_the_next_identify_from_the_send(server: RedisServer) -> None:
    async with host(server, interval=30.0, margin=0.0) as a:
        assert (await a.try_grant(0)).outcome is GrantOutcome.GRANTED
        before = int(await a.redis.get(a.keys.identify_next(0)))
        await a.sent(0)
        assert int(await a.redis.get(a.keys.identify_next(0))) >= before


async def test_joining_a_fleet_names_what_is_wrong_and_never_the_password(
    server: RedisServer,
) -> None:
    from runtime.cluster.fleet import FleetClaimError, claim_fleet, connect
    from runtime.config import ClusterConfig

    with RedisServer(password="s3cret-pw") as guarded:
        wrong = guarded.url.replace("s3cret-pw", "wrong-pw")
        with pytest.raises(ClusterUnavailable, match="refused the password") as caught:
            await connect(ClusterConfig(redis_url=wrong, fleet="bot"))
        assert "wrong-pw" not in str(caught.value)
        client = await connect(ClusterConfig(redis_url=guarded.url, fleet="bot"))
        await client.aclose()
    missing = f"unix://{server.dir}/no-such.sock"
    with pytest.raises(ClusterUnavailable, match="cannot reach Redis"):
        await connect(ClusterConfig(redis_url=missing, fleet="bot"))
    client = await connect(ClusterConfig(redis_url=server.url, fleet="bot"))
    try:
        await claim_fleet(client, FleetKeys("bot"), "token-of-bot-a")
        await claim_fleet(client, FleetKeys("bot"), "token-of-bot-a")  # again: the same bot
        before = await client.dbsize()
        with pytest.raises(FleetClaimError, match="another bot token"):
            await claim_fleet(client, FleetKeys("bot"), "token-of-bot-b")
        assert await client.dbsize() == before  # nothing written
        stored = (await client.get(FleetKeys("bot").owner_token)).decode()
        assert "token-of-bot-a" not in stored
    finally:
        await client.aclose()


async def test_the_password_may_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runtime.cluster.fleet import connect
    from runtime.config import ClusterConfig

    with RedisServer(password="from-env-pw") as guarded:
        monkeypatch.setenv("TEST_REDIS_PASSWORD", "from-env-pw")
        url = guarded.url.replace("from-env-pw", "${TEST_REDIS_PASSWORD}")
        client = await connect(ClusterConfig(redis_url=url, fleet="bot"))
        assert await client.ping()
        await client.aclose()


async def test_a_redis_behind_tls_is_reached_with_its_ca_and_refused_without(
    tmp_path: Path,
) -> None:
    """rediss:// with a password, verified against the CA named in cluster.redis_ca_file;
    a certificate the client cannot verify is an error that names the cause."""
    from runtime.cluster.fleet import connect
    from runtime.config import ClusterConfig

    with RedisServer(password="tls-pw", tls=True) as secure:
        assert secure.url.startswith("rediss://")
        config = ClusterConfig(redis_url=secure.url, fleet="bot", redis_ca_file=str(secure.ca_file))
        client = await connect(config)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        with pytest.raises(ClusterUnavailable, match="cannot reach Redis") as caught:
            await connect(ClusterConfig(redis_url=secure.url, fleet="bot"))  # system CAs only
        assert "certificate" in str(caught.value) and "tls-pw" not in str(caught.value)
        with pytest.raises(ClusterUnavailable, match="redis_ca_file"):
            await connect(
                ClusterConfig(redis_url=secure.url, fleet="bot", redis_ca_file=str(tmp_path / "x"))
            )
