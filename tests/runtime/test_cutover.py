"""The reshard's switch between generations: every guild event delivered once, none lost."""

from __future__ import annotations

from typing import Any

import orjson

from ipc.codec import DUPLICATE, Envelope
from runtime.cutover import CutOver, event_key


def dispatch(session: str, seq: int, t: str, d: dict[str, Any]) -> list[bytes]:
    envelope = Envelope("shard:0", "dispatch", session, seq, 1).encode()
    body = orjson.dumps({"t": t, "s": seq, "op": 0, "d": d})
    return [f"{t} shard:0".encode(), envelope, body]


def message(n: int) -> dict[str, Any]:
    return {"id": str(1000 + n), "guild_id": "7", "content": f"m{n}", "shardline_guild_seq": n}


def delivered_messages(out: list[list[bytes]]) -> list[int]:
    return [
        orjson.loads(frames[2])["d"]["shardline_guild_seq"]
        for frames in out
        if frames[0] != DUPLICATE and frames[0].startswith(b"MESSAGE_CREATE")
    ]


def test_the_same_event_has_the_same_key_in_both_sessions_whatever_the_order() -> None:
    a = orjson.dumps({"t": "MESSAGE_CREATE", "s": 5, "op": 0, "d": {"id": "1", "x": 2}})
    b = orjson.dumps({"op": 0, "d": {"x": 2, "id": "1"}, "s": 90, "t": "MESSAGE_CREATE"})
    assert event_key(a) == event_key(b) is not None
    assert event_key(a) != event_key(a.replace(b'"1"', b'"2"'))
    assert event_key(b"not json") is None and event_key(b"[1]") is None


def test_a_lagging_new_generation_and_a_lagging_old_one_both_end_in_one_copy_each() -> None:
    cut = CutOver(1 << 20)
    out: list[list[bytes]] = []
    old = [dispatch("old", 100 + n, "MESSAGE_CREATE", message(n)) for n in range(1, 11)]
    new_start = [
        dispatch("new", 1, "READY", {"v": 10}),
        dispatch("new", 2, "GUILD_CREATE", {"id": "7", "name": "g"}),
    ]
    new = [dispatch("new", 2 + n, "MESSAGE_CREATE", message(n)) for n in range(4, 11)]
    for frames in old[:6]:  # the old generation delivered 1-6 before the switch
        assert cut.old(frames)
        out.append(frames)
    for frames in [*new_start, *new[:5]]:  # the new session joined at 4; staged 4-8
        assert cut.new(frames) == []
    out += cut.switch()
    assert not cut.old(old[6])  # the old generation's 7 comes too late: dropped
    for frames in new[5:]:
        out += cut.new(frames)
    assert delivered_messages(out) == list(range(1, 11))  # each once, in order
    markers = [f for f in out if f[0] == DUPLICATE]
    assert len(markers) == 2 + 3  # READY, GUILD_CREATE, and 4-6 already delivered
    assert all(f[2] == b"" and Envelope.decode(f[1]).session == "new" for f in markers)
    assert cut.duplicates == 5 and not cut.overflowed


def test_staging_beyond_its_budget_says_so() -> None:
    cut = CutOver(2_000)
    for n in range(50):
        cut.new(dispatch("new", n, "MESSAGE_CREATE", message(n)))
    assert cut.overflowed


def test_an_old_key_is_forgotten_after_a_while() -> None:
    now = [0.0]
    cut = CutOver(1 << 20, remember=10.0, clock=lambda: now[0])
    frames = dispatch("old", 1, "MESSAGE_REACTION_ADD", {"emoji": "x", "user_id": "1"})
    cut.old(frames)
    cut.switch()
    now[0] = 11.0  # the same reaction again, much later: a new event, delivered
    assert cut.new(dispatch("new", 9, "MESSAGE_REACTION_ADD", {"emoji": "x", "user_id": "1"}))[0][
        0
    ].startswith(b"MESSAGE_REACTION_ADD")
