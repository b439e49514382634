"""A fleet's reshard record: the driver's decisions from the hosts' entries (no Redis), and
the record's moves against a real redis-server (one reshard at a time, no abort after the
switch, the fleet's generation written with the close)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from runtime.cluster.keys import FleetKeys
from runtime.cluster.reshard import (
    FleetReshard,
    Generation,
    ReshardStore,
    all_staged,
    driver_step,
)
from runtime.reshard import GUILDS_WAIT
from tests.redisserver import RedisServer

RECORD = FleetReshard("1-1", 1, current=2, target=4, state="starting", eta=1.0)


def part(shards: dict[int, tuple[str, int]], **flags: Any) -> dict[str, Any]:
    """A host's entry taking part in RECORD's generation with ``shards`` (state, pending)."""
    listed = [{"id": s, "state": st, "pending": p} for s, (st, p) in shards.items()]
    return {"generation": "", "next": {"id": "1-1", "space": "g1:", "shards": listed, **flags}}


def test_the_driver_switches_once_every_host_stages_and_every_new_shard_has_its_guilds() -> None:
    ready_since: dict[int, float] = {}
    live = {
        "a": part({0: ("ready", 0), 1: ("ready", 0)}, staged=True),
        "b": part({2: ("ready", 0), 3: ("identifying", 1)}, staged=True),
    }
    step = driver_step(RECORD, live, ready_since, 100.0)
    assert (step.state, step.ready) == ("", 3)
    live["b"] = part({2: ("ready", 0), 3: ("ready", 4)}, staged=True)  # READY, guilds to come
    assert driver_step(RECORD, live, ready_since, 101.0).state == ""
    assert driver_step(RECORD, live, ready_since, 101.0 + GUILDS_WAIT).state == "switching"
    live["b"] = part({2: ("ready", 0), 3: ("ready", 0)}, staged=False)  # and one not staging
    assert driver_step(RECORD, live, {}, 200.0).state == ""
    assert not all_staged(RECORD, live)


def test_a_host_whose_new_shard_failed_calls_the_reshard_off() -> None:
    live = {"a": part({0: ("ready", 0)}, staged=True, problem="a new shard failed: 4010")}
    step = driver_step(RECORD, live, {}, 1.0)
    assert (step.state, step.problem) == ("aborted", "host a: a new shard failed: 4010")


def test_closing_waits_for_every_host_to_switch_then_to_run_the_new_generation() -> None:
    switching = FleetReshard("1-1", 1, 2, 4, "switching", 1.0)
    live = {"a": part({}, staged=True, switched=True), "b": part({}, staged=True)}
    assert driver_step(switching, live, {}, 1.0).state == ""
    live["b"] = part({}, staged=True, switched=True)
    assert driver_step(switching, live, {}, 1.0).state == "closing"
    closing = FleetReshard("1-1", 1, 2, 4, "closing", 1.0)
    live["a"] = {"generation": "g1:"}
    assert driver_step(closing, live, {}, 1.0).state == ""
    live["b"] = {"generation": "g1:"}
    assert driver_step(closing, live, {}, 1.0).state == "end"


@pytest.mark.parametrize(
    "raw",
    [
        b"nonsense",
        b"{}",
        b'{"id":"x","number":0,"current":1,"target":2,"state":"starting","eta":1}',
        b'{"id":"x","number":1,"current":1,"target":2,"state":"dancing","eta":1}',
    ],
)
def test_a_record_that_is_not_one_is_ignored(raw: bytes) -> None:
    assert FleetReshard.from_json(raw) is None


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as redis_server:
        yield redis_server


async def test_one_reshard_at_a_time_and_no_abort_after_the_switch(server: RedisServer) -> None:
    client = aioredis.Redis.from_url(server.url)
    try:
        store = ReshardStore(client, FleetKeys("bot"))
        begun = await store.begin(2, 4, 1.0)
        assert begun is not None and begun.space == "g1:" and await store.read() == begun
        assert await store.begin(2, 8, 1.0) is None  # one under way
        assert await store.move(begun, "switching")
        assert not await store.move(begun, "aborted", "too late")  # read before the switch
        switching = await store.read()
        assert switching is not None and switching.state == "switching"
        assert await store.generation() is None
        assert await store.move(switching, "closing", generation=Generation(4, 1))
        assert await store.generation() == Generation(4, 1)
        await store.end(switching)
        assert await store.read() is None
        again = await store.begin(4, 8, 1.0)
        assert again is not None and again.number > begun.number  # a space of its own
        assert again.space == f"g{again.number}:"
        assert await store.move(again, "aborted", "called off")
        aborted = await store.read()
        assert aborted is not None and aborted.problem == "called off"
        assert 0 < await client.pttl(FleetKeys("bot").reshard)  # goes by itself in the end
    finally:
        await client.aclose()
