"""The fault suite: a real shard loop against a gateway that misbehaves on purpose.

For each fault: the loop does not crash, reconnects with growing backoff (no spin), spends
no identify it does not need, and an error event names the fault. Jitter is pinned to its
top (``rng = 1.0``) so each backoff is exactly its bound, and gaps are checked from below.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ipc.errors import ConnectionLost, DecodeError, InvalidSession, ProtocolError
from shards.loop import LocalIdentifyBucket, ShardRunner
from shards.protocol import ShardSettings, ShardState
from tests.shards.helpers import RecordingPublisher, eventually
from tests.system.hostile_gateway import HostileGateway, Peer, Scenario, frame

pytestmark = pytest.mark.slow

BASE = 0.05  # backoff_base for these tests
READY = {"session_id": "s1", "resume_gateway_url": None, "user": {"id": "9"}, "guilds": []}


@asynccontextmanager
async def shard_against(
    scenario: Scenario, rng: float = 1.0, **settings: Any
) -> AsyncIterator[tuple[HostileGateway, ShardRunner, RecordingPublisher]]:
    values: dict[str, Any] = dict(
        token="t",
        shard_id=0,
        shard_count=1,
        intents=1,
        compression="none",
        backoff_base=BASE,
        backoff_max=1.0,
        min_heartbeat_interval=0.05,
    )
    values.update(settings)
    async with HostileGateway(scenario) as gateway:
        publisher = RecordingPublisher()
        runner = ShardRunner(
            ShardSettings(**values),
            gateway.url,
            publisher=publisher,
            identify_bucket=LocalIdentifyBucket(0.0),
        )
        runner.protocol.rng = lambda: rng
        task = asyncio.create_task(runner.run())
        try:
            yield gateway, runner, publisher
            assert not task.done(), "the shard loop ended by itself"
        finally:
            runner.stop()
            state = await asyncio.wait_for(task, 10)  # re-raises if the loop crashed
        assert state is ShardState.STOPPED


async def ready_or_resumed(peer: Peer, seq: int = 1) -> None:
    """HELLO, then answer the client's IDENTIFY with READY or its RESUME with RESUMED."""
    await peer.hello()
    first = await peer.receive()
    if first["op"] == 2:
        await peer.send(frame(0, READY, seq, "READY"))
    else:
        await peer.send(frame(0, None, first["d"]["seq"] + 1, "RESUMED"))


def assert_growing(gaps: list[float], first: float) -> None:
    """Each gap at least the backoff bound: ``first``, then doubling (capped at 1 s)."""
    bound = first
    for gap in gaps:
        assert gap >= bound * 0.95, (gaps, bound)
        bound = min(bound * 2, 1.0)


async def test_a_stream_corrupted_after_every_resumed_backs_off() -> None:
    async def scenario(number: int, peer: Peer) -> None:
        await ready_or_resumed(peer)
        await peer.send_raw(b"\x00not zlib at all\x00\x00\xff\xff")
        await peer.hold()

    async with shard_against(scenario, compression="zlib-stream") as (gateway, _, bus):
        await gateway.wait_for_connections(6)
    assert gateway.identifies == 1  # every later connection RESUMEs
    assert "zlib-stream is corrupt" in bus.errors(DecodeError)[0].message
    assert_growing(gateway.gaps()[1:], 2 * BASE)


@pytest.mark.parametrize("interval", ["nan", 0, -5, 1e12, "inf", None, True])
async def test_an_insane_heartbeat_interval_is_refused(interval: Any) -> None:
    async def scenario(number: int, peer: Peer) -> None:
        await peer.hello(interval)
        await peer.hold()

    async with shard_against(scenario) as (gateway, _, bus):
        await gateway.wait_for_connections(4)
    assert gateway.identifies == 0
    said = bus.errors(ProtocolError)
    assert said and "heartbeat_interval" in said[0].message
    assert_growing(gateway.gaps(), 2 * BASE)


async def test_ready_without_a_session_spends_at_most_the_hourly_cap() -> None:
    async def scenario(number: int, peer: Peer) -> None:
        await peer.hello()
        if (await peer.receive())["op"] == 2:
            await peer.send(frame(0, [], 1, "READY"))
        await peer.hold()

    async with shard_against(scenario, max_identifies_per_hour=3) as (gateway, runner, bus):
        await bus.wait_until(
            lambda: any("max_identifies_per_hour" in e.message for e in bus.errors())
        )
        await eventually(lambda: runner.protocol.state is ShardState.BACKING_OFF)
        assert runner.protocol.reconnect_at is not None
        assert runner.protocol.reconnect_at - runner.clock() > 3000  # waits out the hour
    assert gateway.identifies == 3
    assert any("session_id" in e.message for e in bus.errors(ProtocolError))


async def test_invalid_session_after_every_identify_backs_off() -> None:
    async def scenario(number: int, peer: Peer) -> None:
        await peer.hello()
        while True:
            assert (await peer.receive())["op"] == 2
            await peer.send(frame(9, False))

    async with shard_against(scenario, rng=0.0) as (gateway, _, bus):
        await bus.wait_until(lambda: len(bus.errors(InvalidSession)) >= 2)
        await gateway.wait_for_connections(1)
    said = bus.errors(InvalidSession)
    assert [e.in_a_row for e in said[:2]] == [1, 2]
    assert "1.0s" in said[0].message and "2.0s" in said[1].message


async def test_reconnect_before_hello_forever_backs_off() -> None:
    async def scenario(number: int, peer: Peer) -> None:
        await peer.send(frame(7))
        await peer.hold()

    async with shard_against(scenario) as (gateway, _, _bus):
        await gateway.wait_for_connections(5)
    assert gateway.identifies == 0
    assert_growing(gateway.gaps(), 2 * BASE)


async def test_a_close_code_loop_backs_off() -> None:
    async def scenario(number: int, peer: Peer) -> None:
        await ready_or_resumed(peer)
        await peer.close(4000, "unknown error")

    async with shard_against(scenario) as (gateway, _, bus):
        await gateway.wait_for_connections(5)
    assert gateway.identifies == 1
    assert "4000" in bus.errors(ConnectionLost)[0].message
    assert_growing(gateway.gaps()[1:], 2 * BASE)


async def test_a_decompression_bomb_is_refused_and_the_session_goes_on() -> None:
    async def scenario(number: int, peer: Peer) -> None:
        if number == 1:
            await peer.hello()
            body = b'{"op":0,"t":"X","s":1,"d":"' + b"a" * 8_000_000 + b'"}'
            await peer.send(body)  # on the connection's own zlib stream: ~8 KB on the wire
            await peer.hold()
        else:
            await ready_or_resumed(peer)
            await peer.hold()

    settings = {"compression": "zlib-stream", "max_payload_bytes": 1_000_000}
    async with shard_against(scenario, **settings) as (_gateway, runner, bus):
        await bus.wait_until(lambda: runner.protocol.state is ShardState.READY)
    assert "1000000-byte limit" in bus.errors(DecodeError)[0].message


async def test_a_huge_frame_is_refused_before_it_is_buffered() -> None:
    async def scenario(number: int, peer: Peer) -> None:
        await ready_or_resumed(peer)
        if number == 1:
            await peer.send_raw(b"x" * 2_000_000)
        await peer.hold()

    async with shard_against(scenario, max_payload_bytes=1_000_000) as (gateway, _, bus):
        await gateway.wait_for_connections(2)
        await bus.wait_until(lambda: len(bus.seqs("RESUMED")) >= 1)
    lost = bus.errors(ConnectionLost)
    assert lost and "1009" in lost[0].message


async def test_junk_payloads_are_named_and_the_connection_lives_on() -> None:
    junk: list[bytes | str] = [
        "not json",
        "[]",
        '"text"',
        '{"op": "0"}',
        '{"op": 99, "d": null}',
        frame(0, {"x": 1}, None, None).decode(),  # no t
        '{"t": 5, "s": "x", "op": 0, "d": 1}',
        frame(0, 5, 2, "VOICE_STATE_UPDATE").decode(),
        frame(0, {"id": [1, 2]}, 3, "GUILD_CREATE").decode(),
        frame(0, "x", 4, "GUILD_DELETE").decode(),
        frame(0, {"content": "late"}, 2, "MESSAGE_CREATE").decode(),  # seq goes back
        b"\xff\xfe binary junk",
        frame(11, "ack with data").decode(),
    ]

    async def scenario(number: int, peer: Peer) -> None:
        await ready_or_resumed(peer)
        for message in junk:
            await peer.send_raw(message)
        await peer.send(frame(0, {"content": "fine"}, 10, "MESSAGE_CREATE"))
        await peer.hold()

    async with shard_against(scenario) as (gateway, runner, bus):
        await bus.wait_until(lambda: 10 in bus.seqs("MESSAGE_CREATE"))
        assert len(gateway.opened) == 1  # junk is ignored, not a reason to reconnect
        assert runner.protocol.seq == 10
    messages = " | ".join(e.message for e in bus.errors())
    assert "not JSON" in messages
    assert "unknown gateway opcode 99" in messages
    assert "without an event type" in messages
    assert "went backwards" in messages


async def test_a_server_that_never_says_hello_is_left_with_growing_backoff() -> None:
    async def scenario(number: int, peer: Peer) -> None:
        await peer.hold()

    async with shard_against(scenario, hello_timeout=0.2) as (gateway, _, bus):
        await gateway.wait_for_connections(4)
    assert "no HELLO" in bus.errors(ConnectionLost)[0].message
    gaps = gateway.gaps()
    assert all(gap >= 0.2 for gap in gaps)
    assert_growing([g - 0.2 for g in gaps], 2 * BASE)


async def test_a_spent_identify_budget_holds_identifies_not_the_fleet(tmp_path: Path) -> None:
    from tests.system.test_supervisor import all_ready, emulator, fleet

    async with emulator(shards=2, session_start_remaining=2) as emu, fleet(emu, tmp_path) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        assert sup.scheduler.remaining == 0
        await emu.close_shard(1, 4009)  # session timed out: shard 1 must identify afresh
        await eventually(lambda: sup.scheduler.starved, timeout=30)
        # Shard 1 waits for the day's reset instead of getting the token reset; the fleet,
        # and shard 0 in it, keep running.
        assert not sup._stop.is_set()
        assert sup.status().to_json()["shards"][0]["state"] == "ready"
        assert len(emu.gateway.identifies) == 2
