"""ipc.Client's dispatch without sockets: typed handlers, dedup, gaps, guild partitions."""

from __future__ import annotations

import orjson

from ipc.client import Client
from ipc.codec import DUPLICATE, encode_bus_dispatch, encode_bus_event
from ipc.errors import DecodeError, ErrorEvent
from ipc.events import MessageCreate


def dispatch(seq: int, guild: int = 4194304 * 3, session: str = "s") -> list[bytes]:
    body = {
        "id": str(seq),
        "channel_id": "1",
        "guild_id": str(guild),
        "content": f"m{seq}",
        "author": {"id": "2", "username": "u", "discriminator": "0"},
        "timestamp": "t",
    }
    raw = orjson.dumps({"t": "MESSAGE_CREATE", "s": seq, "op": 0, "d": body})
    return encode_bus_dispatch("MESSAGE_CREATE", raw, "shard:0", session, seq, 0)


async def test_typed_handlers_dedup_and_gap_counting() -> None:
    client = Client("ipc:///nowhere", "ipc:///nowhere", dedupe=True)
    seen: list[str] = []
    errors: list[ErrorEvent] = []
    client.on(MessageCreate)(lambda e: seen.append(e.content))

    @client.on(ErrorEvent)
    async def on_error(event: ErrorEvent) -> None:
        errors.append(event)

    # a duplicate, a gap of two, then a replay of an older one (as after a shard restart)
    for seq in (1, 2, 2, 5, 3):
        await client._dispatch(dispatch(seq))
    await client._dispatch(encode_bus_event(DecodeError(message="x"), "shard:0"))
    assert seen == ["m1", "m2", "m5"]  # with dedupe, anything at or below the last seq goes
    assert client.gaps == 2
    assert [e.message for e in errors] == ["x"]


async def test_processes_split_guilds() -> None:
    first = Client("ipc:///x", "ipc:///x", partition=(0, 2))
    second = Client("ipc:///x", "ipc:///x", partition=(1, 2))
    got: dict[int, list[int]] = {0: [], 1: []}
    first.on(MessageCreate)(lambda e: got[0].append(e.guild_id))
    second.on(MessageCreate)(lambda e: got[1].append(e.guild_id))
    guilds = [(n << 22) for n in range(6)]
    for seq, guild in enumerate(guilds, 1):
        for client in (first, second):
            await client._dispatch(dispatch(seq, guild))
    assert got[0] == [g for g in guilds if (g >> 22) % 2 == 0]
    assert got[1] == [g for g in guilds if (g >> 22) % 2 == 1]


async def test_a_filtered_client_counts_loss_from_the_bus_notice_not_from_seq() -> None:
    from ipc.errors import EventsDropped

    notice = encode_bus_event(
        EventsDropped(message="lost", source="supervisor", dropped=7), "supervisor"
    )
    filtered = Client("ipc:///x", "ipc:///x")
    filtered._count_gaps = False  # as connect([b"MESSAGE_CREATE "]) sets it
    for seq in (1, 5):  # other types took 2-4: not loss
        await filtered._dispatch(dispatch(seq))
    await filtered._dispatch(notice)
    assert (filtered.gaps, filtered.bus_dropped) == (7, 7)
    everything = Client("ipc:///x", "ipc:///x")
    for seq in (1, 9):  # the seven dropped show in seq already
        await everything._dispatch(dispatch(seq))
    await everything._dispatch(notice)
    assert (everything.gaps, everything.bus_dropped) == (7, 7)


async def test_a_duplicate_marker_moves_the_seq_on_and_handles_nothing() -> None:
    """A reshard's cut-over sends [DUPLICATE, envelope, b""] for what was delivered already:
    the session's seq stays whole (no gap counted) and no handler runs."""
    client = Client("ipc:///nowhere", "ipc:///nowhere")
    seen: list[str] = []
    client.on(MessageCreate)(lambda e: seen.append(e.content))
    await client._dispatch(dispatch(1))
    await client._dispatch([DUPLICATE, dispatch(2)[1], b""])
    await client._dispatch([DUPLICATE, b"not an envelope", b""])  # hostile: ignored
    await client._dispatch(dispatch(3))
    assert seen == ["m1", "m3"] and client.gaps == 0
