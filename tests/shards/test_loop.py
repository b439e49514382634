"""The shard loop against the emulator: one test per behaviour of the shard process."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from emulator import shard_for
from ipc.commands import RequestGuildMembers, UpdatePresence
from ipc.errors import (
    CommandFailed,
    ConnectionLost,
    DecodeError,
    FatalClose,
    PayloadTooLarge,
    ProtocolError,
)
from shards.closecodes import CLOSE_CODES, CloseAction
from shards.protocol import ShardState
from tests.shards.helpers import DrivenClock, emulator, eventually, running_shard, until_ready

LONG_INTERVAL = 60_000


def opcodes(emu, connection: int | None = None) -> list[int]:  # type: ignore[no-untyped-def]
    # every test here runs one shard; payloads sent before IDENTIFY carry no shard id yet
    return [r.op for r in emu.received() if connection is None or r.connection == connection]


def connections(emu) -> list[int]:  # type: ignore[no-untyped-def]
    return sorted({r.connection for r in emu.received()})


async def test_ready_and_every_guild_create_reach_the_bus() -> None:
    async with emulator(guilds=6) as emu, running_shard(emu) as (runner, bus):
        await bus.wait_until(lambda: len(bus.seqs("GUILD_CREATE")) == 6)
        assert bus.dispatches[0][0] == "READY"
        assert bus.seqs() == list(range(1, 8))
        assert runner.protocol.status()["guilds"] == 6
        assert runner.protocol.state is ShardState.READY


@pytest.mark.parametrize("compression", ["zlib-stream", "zstd-stream", "none"])
async def test_compressions(compression: str) -> None:
    async with emulator(guilds=3) as emu, running_shard(emu, compression=compression) as (_, bus):
        await bus.wait_until(lambda: len(bus.seqs("GUILD_CREATE")) == 3)
        gid = emu.world.guild_ids[0]
        for n in range(20):
            await emu.message(gid, f"m{n}")
        await bus.wait_until(lambda: len(bus.seqs("MESSAGE_CREATE")) == 20)
        assert emu.state()["connections"][0]["path"].endswith(
            "" if compression == "none" else f"compress={compression}"
        )


async def test_first_heartbeat_is_jittered() -> None:
    # jitter 0: the first heartbeat goes at once, before the identify
    async with (
        emulator(heartbeat_interval_ms=LONG_INTERVAL) as emu,
        running_shard(emu, jitter=0.0) as (_, bus),
    ):
        await until_ready(bus)
        assert opcodes(emu)[:2] == [1, 2]
    # jitter near 1 with a 60 s interval: no heartbeat yet when READY arrives
    async with (
        emulator(heartbeat_interval_ms=LONG_INTERVAL) as emu,
        running_shard(emu, jitter=0.999) as (runner, bus),
    ):
        await until_ready(bus)
        assert opcodes(emu) == [2]
        assert runner.protocol.pacemaker.next_beat is not None


async def test_server_heartbeat_request_is_answered() -> None:
    async with (
        emulator(heartbeat_interval_ms=LONG_INTERVAL) as emu,
        running_shard(emu, jitter=0.999) as (runner, bus),
    ):
        await until_ready(bus)
        await emu.request_heartbeat(0)
        await emu.wait_until(lambda: opcodes(emu).count(1) == 1)
        await eventually(lambda: runner.protocol.latency is not None)


async def test_zombie_detected_within_one_interval_then_resumed() -> None:
    # The loop's clock is the test's: a minute-long heartbeat interval passes at once.
    clock = DrivenClock()
    async with (
        emulator(heartbeat_interval_ms=LONG_INTERVAL) as emu,
        running_shard(emu, jitter=0.0, clock=clock) as (runner, bus),
    ):
        await until_ready(bus)
        first = connections(emu)[0]
        await eventually(lambda: runner.protocol.latency is not None)  # the first beat's ACK
        before = len([r for r in emu.received(op=1) if r.connection == first])
        emu.zombie(0)
        clock.advance(LONG_INTERVAL / 1000)  # the next beat is due; it goes unanswered
        runner.wake()
        await emu.wait_until(
            lambda: len([r for r in emu.received(op=1) if r.connection == first]) == before + 1
        )
        assert not bus.errors(ConnectionLost)  # one missed ACK is not yet a zombie
        clock.advance(LONG_INTERVAL / 1000)  # a whole interval without an ACK: zombie
        runner.wake()
        await until_ready(bus, 2)  # RESUMED on a new connection
        assert [e for e in bus.errors(ConnectionLost) if "zombied" in e.message]
        after = len([r for r in emu.received(op=1) if r.connection == first]) - before
        assert after == 1, after
        second = connections(emu)[-1]
        assert opcodes(emu, second)[0] == 6  # RESUME, not IDENTIFY
        assert bus.dispatches[-1][0] == "RESUMED"


async def test_reconnect_op_resumes() -> None:
    async with emulator() as emu, running_shard(emu) as (_, bus):
        await until_ready(bus)
        await emu.reconnect(0)
        await until_ready(bus, 2)
        assert [op for op in opcodes(emu) if op != 1] == [2, 6]


async def test_invalid_session_resumable_resumes() -> None:
    async with emulator() as emu, running_shard(emu) as (_, bus):
        await until_ready(bus)
        await emu.invalid_session(0, resumable=True)
        await until_ready(bus, 2)
        assert bus.dispatches[-1][0] == "RESUMED"


async def test_invalid_session_not_resumable_identifies_after_a_wait() -> None:
    async with emulator() as emu, running_shard(emu, jitter=0.0) as (_, bus):
        await until_ready(bus)
        first_session = bus.dispatches[0][2]
        await emu.invalid_session(0, resumable=False)
        await bus.wait_until(lambda: bus.seqs("READY") == [1, 1])
        assert [op for op in opcodes(emu) if op != 1] == [2, 2]
        assert bus.dispatches[-1][2] != first_session


RESUME_CODES = [c for c, p in CLOSE_CODES.items() if p.action is CloseAction.RESUME]
IDENTIFY_CODES = [c for c, p in CLOSE_CODES.items() if p.action is CloseAction.IDENTIFY]
FATAL_CODES = [c for c, p in CLOSE_CODES.items() if p.action is CloseAction.FATAL]


@pytest.mark.parametrize("code", [*RESUME_CODES, 1011, 3999])
async def test_resumable_close_codes(code: int) -> None:
    async with emulator() as emu, running_shard(emu) as (_, bus):
        await until_ready(bus)
        await emu.close_shard(0, code)
        await until_ready(bus, 2)
        assert bus.dispatches[-1][0] == "RESUMED"


@pytest.mark.parametrize("code", IDENTIFY_CODES)
async def test_session_ending_close_codes_identify_afresh(code: int) -> None:
    async with emulator() as emu, running_shard(emu) as (_, bus):
        await until_ready(bus)
        await emu.close_shard(0, code)
        await until_ready(bus, 2)
        assert [t for t, _, _ in bus.dispatches if t in ("READY", "RESUMED")] == ["READY"] * 2


@pytest.mark.parametrize("code", FATAL_CODES)
async def test_fatal_close_codes_stop_with_advice(code: int) -> None:
    async with emulator() as emu, running_shard(emu) as (runner, bus):
        await until_ready(bus)
        await emu.close_shard(0, code)
        await bus.wait_until(lambda: bool(bus.errors(FatalClose)))
        fatal = bus.errors(FatalClose)[0]
        assert fatal.code == code and fatal.advice
        await eventually(lambda: runner.protocol.state is ShardState.FATAL)
        assert len(connections(emu)) == 1  # no reconnect attempt


async def test_real_validation_failures_are_fatal() -> None:
    cases = [
        ({"token": "bad"}, {}, 4004, "token"),
        ({"intents": 513 | 1 << 1}, {"enabled_privileged_intents": 0}, 4014, "guild_members"),
        ({"shard_count": 1}, {"max_guilds_per_shard": 2}, 4011, "more shards"),
    ]
    for settings, rules, code, advice in cases:
        async with emulator(guilds=4, **rules) as emu, running_shard(emu, **settings) as (_, bus):
            await bus.wait_until(lambda: bool(bus.errors(FatalClose)))
            fatal = bus.errors(FatalClose)[0]
            assert fatal.code == code and advice in fatal.advice


async def test_resume_replays_missed_dispatches_with_no_gap() -> None:
    async with emulator(guilds=2) as emu, running_shard(emu) as (_, bus):
        await until_ready(bus)
        stream = emu.stream(0, rate=4000, count=600)
        await bus.wait_until(lambda: len(bus.seqs("MESSAGE_CREATE")) >= 100)
        emu.drop(0)
        await stream
        last = emu.sessions(0)[0].seq
        await bus.wait_until(lambda: last in bus.seqs())
        seqs = bus.seqs()
        assert set(seqs) == set(range(1, last + 1))
        assert bus.dispatches[-1][1] == last or "RESUMED" in [t for t, _, _ in bus.dispatches]


async def test_rate_limit_holds_heartbeats_on_time_under_a_command_flood() -> None:
    window = dict(send_limit=30, send_window=1.0)
    async with (
        emulator(heartbeat_interval_ms=500, **window) as emu,
        running_shard(emu, heartbeat_reserve=4, **window) as (runner, bus),
    ):
        await until_ready(bus)
        for i in range(150):
            runner.submit(RequestGuildMembers(guild_id=1, user_ids=[2], nonce=str(i)))
        await emu.wait_until(lambda: len(emu.received(op=8)) == 150, timeout=30)
        nonces = [r.d["nonce"] for r in emu.received(op=8)]
        assert nonces == [str(i) for i in range(150)]  # all, once, in order
        assert len(connections(emu)) == 1  # never closed 4008, never zombied
        assert not bus.errors(ConnectionLost)
        # heartbeats kept flowing while commands waited for the window
        heartbeats = [r.at for r in emu.received(op=1)]
        commands = [r.at for r in emu.received(op=8)]
        assert [h for h in heartbeats if commands[0] < h < commands[-1]]


async def test_oversized_payload_is_refused_with_an_error_event() -> None:
    async with emulator() as emu, running_shard(emu) as (runner, bus):
        await until_ready(bus)
        runner.submit(UpdatePresence("online", [{"name": "x" * 5000, "type": 0}]))
        runner.submit(UpdatePresence("idle"))
        await emu.wait_until(lambda: len(emu.received(op=3)) == 1)
        assert emu.received(op=3)[0].d["status"] == "idle"
        assert bus.errors(PayloadTooLarge)[0].size > 4096


async def test_garbage_frames_are_survived() -> None:
    async with emulator() as emu, running_shard(emu) as (runner, bus):
        await until_ready(bus)
        await emu.send_raw(0, b"{this is not json")
        await emu.send_raw(0, orjson.dumps({"op": 0, "d": {}, "s": 50}))  # no t
        await emu.send_raw(0, orjson.dumps({"op": 77, "d": None}))
        await emu.message(emu.world.guild_ids[0], "still alive")
        await bus.wait_until(lambda: bool(bus.seqs("MESSAGE_CREATE")))
        assert bus.errors(DecodeError) and len(bus.errors(ProtocolError)) == 2
        assert len(connections(emu)) == 1
        # a corrupt zlib stream cannot continue: reconnect and resume
        await emu.send_frame(0, b"\x00\x01garbage\x00\x00\xff\xff")
        await until_ready(bus, 2)
        assert bus.dispatches[-1][0] == "RESUMED" and len(bus.errors(DecodeError)) == 2
        assert runner.protocol.state is ShardState.READY


async def test_commands_during_forced_reconnects_are_sent_once_in_order() -> None:
    """The race arikawa's refactor removed: commands flood while the connection is torn down
    by zombie mode, RECONNECT and dropped sockets. Every command reaches a live session
    exactly once, in order, or is reported failed; none is doubled."""
    window = dict(send_limit=120, send_window=0.5)
    total = 400
    async with (
        emulator(heartbeat_interval_ms=150, **window) as emu,
        running_shard(emu, **window) as (runner, bus),
    ):
        await until_ready(bus)
        disruptions = [lambda: emu.zombie(0), lambda: emu.reconnect(0), lambda: emu.drop(0)]
        for batch in range(4):
            for i in range(batch * 100, batch * 100 + 100):
                runner.submit(UpdatePresence("online", [{"name": f"c{i}", "type": 0}]))
            if batch == 3:
                break
            # disrupt while this batch is being sent (the window lets ~110 through per 0.5 s)
            floor = batch * 100 - 50
            await emu.wait_until(lambda: len(emu.received(op=3)) > floor)  # noqa: B023
            result = disruptions[batch]()
            if asyncio.iscoroutine(result):
                await result
            await until_ready(bus, batch + 2)
        failed_names = lambda: {  # noqa: E731
            e.detail["activities"][0]["name"] for e in bus.errors(CommandFailed)
        }
        received = lambda: [  # noqa: E731
            r.d["activities"][0]["name"] for r in emu.received(op=3)
        ]
        await emu.wait_until(
            lambda: set(received()) | failed_names() == {f"c{i}" for i in range(total)},
            timeout=30,
        )
        names = received()
        assert len(names) == len(set(names)), "a command was sent twice"
        order = [int(n[1:]) for n in names]
        assert order == sorted(order), "commands were reordered"
        assert len(set(received()) | failed_names()) == total
        assert len(connections(emu)) >= 4  # the disruptions really happened
        # every command arrived on an authenticated connection (the emulator closes 4003
        # otherwise, which would have shown up as a reconnect without a session)
        assert not [e for e in bus.errors(ConnectionLost) if "4003" in e.message]


def test_sharding_formula_sanity() -> None:
    assert shard_for(175928847299117063, 4) == (175928847299117063 >> 22) % 4


async def test_a_full_bus_holds_the_dispatches_in_order_and_stops_reading() -> None:
    """The bus takes nothing for a while: the shard keeps what comes, in order, stops
    reading the gateway (the rest waits in TCP, not in memory), and publishes it all once
    the bus takes events again; nothing is dropped."""
    async with emulator(guilds=2) as emu, running_shard(emu) as (runner, bus):
        await until_ready(bus)
        await bus.wait_until(lambda: len(bus.seqs("GUILD_CREATE")) == 2)
        bus.full = True
        gid = emu.world.guild_ids[0]
        for n in range(30):
            await emu.message(gid, f"m{n}")
        await eventually(lambda: runner.ws is not None and not runner.ws.transport.is_reading())
        assert not bus.seqs("MESSAGE_CREATE")
        bus.full = False
        await bus.wait_until(lambda: len(bus.seqs("MESSAGE_CREATE")) == 30)
        seqs = bus.seqs()
        assert seqs == list(range(1, len(seqs) + 1))  # every dispatch, in order
        assert bus.dropped == 0
        assert runner.ws is not None and runner.ws.transport.is_reading()


async def test_a_bus_full_past_the_limit_costs_counted_drops_not_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shards.loop.HOLD_LIMIT", 0.2)
    async with emulator(guilds=2) as emu, running_shard(emu) as (runner, bus):
        await until_ready(bus)
        await bus.wait_until(lambda: len(bus.seqs("GUILD_CREATE")) == 2)
        bus.full = True
        gid = emu.world.guild_ids[0]
        for n in range(10):
            await emu.message(gid, f"m{n}")
        await eventually(lambda: bus.dropped == 10)  # held 0.2 s, then dropped and counted
        assert runner.ws is not None and runner.ws.transport.is_reading()
        bus.full = False
        await emu.message(gid, "after")
        await bus.wait_until(lambda: len(bus.seqs("MESSAGE_CREATE")) == 1)
        assert runner.protocol.state is ShardState.READY  # the session went on


async def test_reading_pauses_while_the_inbox_holds_too_much_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past INBOX_LIMIT unread bytes the shard stops reading until it has handled them: with
    a limit of one message every message still arrives, in order, and reading goes on."""
    monkeypatch.setattr("shards.loop.INBOX_LIMIT", 1)
    async with emulator(guilds=2) as emu, running_shard(emu) as (runner, bus):
        await until_ready(bus)
        gid = emu.world.guild_ids[0]
        for n in range(40):
            await emu.message(gid, f"m{n}")
        await bus.wait_until(lambda: len(bus.seqs("MESSAGE_CREATE")) == 40)
        seqs = bus.seqs()
        assert seqs == list(range(1, len(seqs) + 1)) and bus.dropped == 0
        assert runner.ws is not None and runner.ws.transport.is_reading()
