"""The gateway core against a broken or hostile server (issue 11, items 4-7): every fault is
named in an error event, and nothing spins, grows without bound or burns identifies."""

from __future__ import annotations

from typing import Any

import pytest

from ipc.errors import ConnectionLost, DecodeError, InvalidSession, ProtocolError
from shards.inflate import InflateError, make_inflator
from shards.protocol import (
    Checkpoint,
    Close,
    Forward,
    GatewayProtocol,
    Publish,
    RequestPermit,
    ShardState,
)
from tests.shards.test_protocol import INTERVAL_MS, Deflater, emitted, frame, make, ready, sent


def reconnect(proto: GatewayProtocol, now: float) -> None:
    proto.on_connecting(now)
    proto.on_connected(now)


def test_a_stream_corrupted_after_every_resumed_meets_growing_backoff() -> None:
    proto = make(jitter=1.0, compression="zlib-stream", backoff_base=1.0, backoff_max=60.0)
    deflate = Deflater()
    proto.receive(deflate(frame(10, {"heartbeat_interval": INTERVAL_MS})), 0.0)
    proto.on_permit(0.0)
    proto.receive(deflate(frame(0, {"session_id": "s", "guilds": []}, 1, "READY")), 0.0)
    delays = []
    now = 1.0
    for _ in range(8):
        actions = proto.receive(b"garbage" + b"\x00\x00\xff\xff", now)
        assert emitted(actions, DecodeError) and any(isinstance(a, Close) for a in actions)
        proto.on_closed(3000, "", now, handshake=True)
        delays.append(proto.reconnect_at - now)  # type: ignore[operator]
        now = proto.reconnect_at  # type: ignore[assignment]
        reconnect(proto, now)
        deflate = Deflater()
        proto.receive(deflate(frame(10, {"heartbeat_interval": INTERVAL_MS})), now)
        proto.receive(deflate(frame(0, None, 2, "RESUMED")), now)
        assert proto.state is ShardState.READY
    assert delays[0] == 0.0  # the first failure after a healthy start reconnects at once
    assert delays[1:] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_consecutive_invalid_sessions_back_off_exponentially() -> None:
    proto = make(jitter=0.5)
    ready(proto)
    waits = []
    now = 10.0
    for n in range(1, 6):
        said = emitted(proto.receive(frame(9, False), now), InvalidSession)
        assert said[0].in_a_row == n and not said[0].resumable
        waits.append(proto.reidentify_at - now)  # type: ignore[operator]
        now = proto.reidentify_at  # type: ignore[assignment]
        proto.receive(frame(11), now)  # the connection stays alive meanwhile
        assert any(isinstance(a, RequestPermit) for a in proto.poll(now))
        assert sent(proto.on_permit(now), "identify")
    assert waits == [3.0, 6.0, 12.0, 24.0, 48.0]
    proto.receive(frame(0, {"session_id": "again"}, 1, "READY"), now)
    said = emitted(proto.receive(frame(9, False), now + 1), InvalidSession)
    assert said[0].in_a_row == 1  # a READY ends the run


def test_one_shard_identifies_at_most_its_hourly_cap() -> None:
    proto = make(jitter=0.0, max_identifies_per_hour=3)
    now = 0.0
    identified = []
    for _ in range(6):
        actions = proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), now)
        if any(isinstance(a, RequestPermit) for a in actions):
            if sent(proto.on_permit(now), "identify"):
                identified.append(now)
            proto.receive(frame(0, {"session_id": f"s{now}"}, 1, "READY"), now)
            proto.on_closed(4009, "session timed out", now + 1, handshake=True)
        else:
            said = emitted(actions, ProtocolError)
            assert "max_identifies_per_hour" in said[0].message
            assert any(isinstance(a, Close) for a in actions)
            proto.on_closed(3000, "", now, handshake=True)
            assert proto.reconnect_at is not None and proto.reconnect_at >= identified[0] + 3600
        now = proto.reconnect_at  # type: ignore[assignment]
        reconnect(proto, now)
    assert len([t for t in identified if t < identified[0] + 3600]) == 3
    assert len(identified) > 3  # after the hour, identifying goes on


@pytest.mark.parametrize(
    "interval", ["nan", float("nan"), 0, -5, 1e12, "inf", float("inf"), True, None, "41250", 10]
)
def test_hello_with_an_insane_heartbeat_interval_is_a_protocol_error(interval: Any) -> None:
    proto = make(jitter=1.0)
    actions = proto.receive(frame(10, {"heartbeat_interval": interval}), 1.0)
    said = emitted(actions, ProtocolError)
    assert said and "heartbeat_interval" in said[0].message
    assert any(isinstance(a, Close) for a in actions)
    assert proto.pacemaker.interval is None and proto.next_deadline() is None
    proto.on_closed(3000, "", 1.0, handshake=True)
    assert proto.reconnect_at is not None and proto.reconnect_at > 1.0  # backs off


@pytest.mark.parametrize("d", [[], None, {}, {"session_id": 5}, {"session_id": ""}, "x"])
def test_ready_without_a_session_id_reconnects_to_identify(d: Any) -> None:
    proto = make(jitter=1.0)
    proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 1.0)
    proto.on_permit(1.0)
    actions = proto.receive(frame(0, d, 1, "READY"), 1.0)
    assert "session_id" in emitted(actions, ProtocolError)[0].message
    assert any(isinstance(a, Close) for a in actions)
    assert not any(isinstance(a, Checkpoint) for a in actions)
    proto.on_closed(3000, "", 1.0, handshake=True)
    assert proto.state is ShardState.BACKING_OFF and not proto.resumable
    assert proto.reconnect_at is not None and proto.reconnect_at > 1.0


@pytest.mark.parametrize(
    "url", ["http://evil.example", "wss://", "wss://user:pw@evil", "wss://h/?x=1", 5, "a b"]
)
def test_a_hostile_resume_url_is_not_used(url: Any) -> None:
    proto = make()
    proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 1.0)
    proto.on_permit(1.0)
    actions = proto.receive(
        frame(0, {"session_id": "s", "resume_gateway_url": url}, 1, "READY"), 1.0
    )
    assert "resume_gateway_url" in emitted(actions, ProtocolError)[0].message
    assert proto.resume_url is None
    assert proto.connect_url("wss://gateway.example").startswith("wss://gateway.example/?")


def test_a_decompression_bomb_is_refused() -> None:
    proto = make(compression="zlib-stream", max_payload_bytes=1_000_000)
    bomb = Deflater()(b'{"op":0,"t":"X","s":1,"d":"' + b"a" * 5_000_000 + b'"}')
    assert len(bomb) < 50_000
    actions = proto.receive(bomb, 1.0)
    assert "1000000-byte limit" in emitted(actions, DecodeError)[0].message
    assert any(isinstance(a, Close) for a in actions)


@pytest.mark.parametrize("compression", ["zlib-stream", "zstd-stream", "none"])
def test_every_inflator_caps_one_payload(compression: str) -> None:
    inflator = make_inflator(compression, max_size=1000)
    big = b"x" * 2000
    if compression == "zlib-stream":
        data = Deflater()(big)
    elif compression == "zstd-stream":
        from backports.zstd import ZstdCompressor

        c = ZstdCompressor()
        data = c.compress(big) + c.flush(ZstdCompressor.FLUSH_BLOCK)
    else:
        data = big
    with pytest.raises(InflateError, match="limit"):
        inflator.feed(data)


def test_zlib_fragments_without_an_end_are_bounded() -> None:
    inflator = make_inflator("zlib-stream", max_size=1000)
    with pytest.raises(InflateError, match="limit"):
        for _ in range(100):
            inflator.feed(b"y" * 100)  # never ends with 00 00 FF FF


def test_sequence_going_backwards_is_published_logged_and_never_checkpointed() -> None:
    proto = make()
    ready(proto)
    proto.receive(frame(0, {"content": "a"}, 10, "MESSAGE_CREATE"), 2.0)
    logged = []
    for n in range(100):
        actions = proto.receive(frame(0, {"content": "b"}, 5, "MESSAGE_CREATE"), 3.0 + n)
        assert any(isinstance(a, Publish) and a.seq == 5 for a in actions)  # nothing lost
        logged += emitted(actions, ProtocolError)
    assert proto.seq == 10
    assert "backwards" in logged[0].message and 1 <= len(logged) <= 8  # said, not flooded
    assert proto.stop()[-1] == Checkpoint(
        1, 4, "sess", 10, "wss://resume.example", guilds=0, user_id="99"
    )
    # The parsed path (a READ dispatch) is held to the same rule.
    proto = make()
    ready(proto)
    proto.receive(frame(0, {"id": "1"}, 9, "GUILD_CREATE"), 2.0)
    actions = proto.receive(frame(0, {"id": "2"}, 4, "GUILD_CREATE"), 2.0)
    assert emitted(actions, ProtocolError) and proto.seq == 9


def test_a_connection_that_never_says_hello_is_given_up_with_growing_backoff() -> None:
    proto = make(jitter=1.0, hello_timeout=20.0)
    assert proto.next_deadline() == 20.0
    assert proto.poll(19.9) == []
    actions = proto.poll(20.0)
    assert "no HELLO" in emitted(actions, ConnectionLost)[0].message
    assert any(isinstance(a, Close) for a in actions)
    proto.on_closed(3000, "", 20.0, handshake=True)
    assert proto.reconnect_at is not None and proto.reconnect_at > 20.0


def test_an_identify_that_gets_no_ready_is_given_up() -> None:
    proto = make(ready_timeout=60.0)
    proto.receive(frame(10, {"heartbeat_interval": 1_000_000 // 10}), 1.0)
    proto.on_permit(2.0)
    for t in range(3, 62, 5):  # the connection stays alive: ACKs come
        proto.receive(frame(11), float(t))
        assert not any(isinstance(a, Close) for a in proto.poll(float(t)))
    actions = proto.poll(62.0)
    assert "no READY" in emitted(actions, ConnectionLost)[0].message


def test_a_resumed_shard_still_forwards_the_bots_own_voice_state() -> None:
    proto = make()
    ready(proto)  # READY says the bot is user 99
    checkpoint = proto.checkpoint()
    assert checkpoint.user_id == "99"
    resumed = make()
    resumed.restore(
        checkpoint.session_id, checkpoint.seq, checkpoint.resume_url, 0, checkpoint.user_id
    )
    resumed.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 1.0)
    resumed.receive(frame(0, None, 2, "RESUMED"), 1.0)
    mine = {"guild_id": "5", "user_id": "99", "session_id": "v", "channel_id": "6"}
    other = {**mine, "user_id": "100"}
    forwarded = resumed.receive(frame(0, mine, 3, "VOICE_STATE_UPDATE"), 2.0)
    assert any(isinstance(a, Forward) for a in forwarded)
    assert not any(
        isinstance(a, Forward)
        for a in resumed.receive(frame(0, other, 4, "VOICE_STATE_UPDATE"), 2.0)
    )


@pytest.mark.parametrize("t", ["READY", "RESUMED"])
def test_ready_or_resumed_out_of_turn_is_ignored_not_a_crash(t: str) -> None:
    proto = make()  # connected, no HELLO yet (found by the property test)
    actions = proto.receive(frame(0, {"session_id": "s"}, 1, t), 1.0)
    assert "out of turn" in emitted(actions, ProtocolError)[0].message
    assert proto.state is ShardState.CONNECTING and proto.session_id is None
    ready(proto, 2.0)
    again = proto.receive(frame(0, {"session_id": "other"}, 2, "READY"), 3.0)
    assert emitted(again, ProtocolError) and proto.session_id == "sess"
