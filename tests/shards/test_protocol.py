"""The gateway state machine, fed payloads and times: no sockets, no clocks."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
import pytest

from ipc.commands import RequestGuildMembers, UpdatePresence
from ipc.errors import (
    CommandFailed,
    ConnectionLost,
    DecodeError,
    FatalClose,
    InvalidSession,
    PayloadTooLarge,
    ProtocolError,
)
from shards.closecodes import CLOSE_CODES, CloseAction
from shards.protocol import (
    RESUMABLE_CLOSE,
    Checkpoint,
    Close,
    Emit,
    Forward,
    GatewayProtocol,
    Publish,
    RequestPermit,
    Send,
    ShardSettings,
    ShardState,
)

INTERVAL_MS = 40_000


def frame(op: int, d: Any = None, s: int | None = None, t: str | None = None) -> bytes:
    return orjson.dumps({"t": t, "s": s, "op": op, "d": d})


class Deflater:
    """The server side of zlib-stream, to feed the protocol what Discord would send."""

    def __init__(self) -> None:
        self.c = zlib.compressobj()

    def __call__(self, data: bytes) -> bytes:
        return self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)


def make(jitter: float = 0.5, compression: str = "none", **settings: Any) -> GatewayProtocol:
    values = dict(token="tok", shard_id=1, shard_count=4, intents=513, compression=compression)
    values.update(settings)
    proto = GatewayProtocol(ShardSettings(**values), rng=lambda: jitter)
    proto.on_connecting(0.0)
    proto.on_connected(0.0)
    return proto


def sent(actions: list[Any], kind: str | None = None) -> list[dict[str, Any]]:
    return [orjson.loads(a.data) for a in actions if isinstance(a, Send) and kind in (None, a.kind)]


def emitted(actions: list[Any], cls: type) -> list[Any]:
    return [a.event for a in actions if isinstance(a, Emit) and isinstance(a.event, cls)]


def ready(proto: GatewayProtocol, now: float = 1.0, session: str = "sess") -> list[Any]:
    """HELLO, permit, READY: the protocol ends up READY with ``session``."""
    actions = proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), now)
    if any(isinstance(a, RequestPermit) for a in actions):
        actions += proto.on_permit(now)
    ready_d = {
        "session_id": session,
        "resume_gateway_url": "wss://resume.example",
        "user": {"id": "99"},
        "guilds": [],
    }
    actions += proto.receive(frame(0, ready_d, 1, "READY"), now)
    return actions


def test_first_heartbeat_is_jittered_then_every_interval() -> None:
    proto = make(jitter=0.25)
    proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 100.0)
    assert proto.next_deadline() == pytest.approx(100.0 + 40.0 * 0.25)
    assert proto.poll(109.9) == []
    first = proto.poll(110.0)
    assert sent(first, "heartbeat") == [{"op": 1, "d": None}]
    proto.receive(frame(11), 110.05)
    assert proto.latency == pytest.approx(0.05)
    assert proto.next_deadline() == pytest.approx(150.0)
    assert sent(proto.poll(150.0), "heartbeat") == [{"op": 1, "d": None}]


def test_identify_waits_for_a_permit() -> None:
    proto = make()
    actions = proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 1.0)
    assert [type(a) for a in actions] == [RequestPermit]
    assert proto.state is ShardState.IDENTIFYING
    identify = sent(proto.on_permit(2.0), "identify")[0]
    assert identify["op"] == 2
    assert identify["d"]["shard"] == [1, 4] and identify["d"]["intents"] == 513
    assert identify["d"]["token"] == "tok" and identify["d"]["large_threshold"] == 250
    assert proto.on_permit(3.0) == []  # never twice on one connection


def test_ready_sets_the_session_and_checkpoints() -> None:
    proto = make()
    actions = ready(proto)
    assert proto.state is ShardState.READY
    assert Checkpoint(1, 4, "sess", 1, "wss://resume.example", guilds=0, user_id="99") in actions
    assert any(isinstance(a, Publish) and a.t == "READY" and a.seq == 1 for a in actions)


def test_server_heartbeat_request_is_answered_at_once() -> None:
    proto = make()
    ready(proto)
    proto.receive(frame(0, {}, 7, "TYPING_START"), 2.0)
    assert sent(proto.receive(frame(1), 2.0), "heartbeat") == [{"op": 1, "d": 7}]


def test_missing_ack_means_zombie_close_and_resume() -> None:
    proto = make(jitter=0.0)
    ready(proto, now=0.0)
    assert sent(proto.poll(0.0), "heartbeat")  # first heartbeat, never ACKed
    actions = proto.poll(40.0)
    assert emitted(actions, ConnectionLost)
    closes = [a for a in actions if isinstance(a, Close)]
    assert closes == [Close(RESUMABLE_CLOSE, "zombied connection")]
    assert not sent(actions)
    proto.on_closed(RESUMABLE_CLOSE, "", 40.1, handshake=False)
    assert proto.state is ShardState.BACKING_OFF and proto.resumable
    assert proto.reconnect_at == pytest.approx(40.1)  # planned: no delay
    assert proto.connect_url("wss://gw").startswith("wss://resume.example/?v=10")


def test_resume_after_restore_sends_session_and_seq() -> None:
    settings = ShardSettings(token="tok", shard_id=0, shard_count=1, intents=1)
    proto = GatewayProtocol(settings)
    assert proto.connect_url("wss://gw") == "wss://gw/?v=10&encoding=json&compress=zlib-stream"
    proto.restore("old-session", 41, "wss://resume.example")
    assert proto.connect_url("wss://gw").startswith("wss://resume.example/?v=10&encoding=json")
    settings.compression = "none"
    proto.on_connecting(0.0)
    proto.on_connected(0.0)
    actions = proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 1.0)
    assert sent(actions, "resume") == [
        {"op": 6, "d": {"token": "tok", "session_id": "old-session", "seq": 41}}
    ]
    assert proto.state is ShardState.RESUMING
    proto.receive(frame(0, {}, 42, "MESSAGE_CREATE"), 1.1)
    actions = proto.receive(frame(0, {}, 43, "RESUMED"), 1.2)
    assert proto.state is ShardState.READY
    assert Checkpoint(0, 1, "old-session", 43, "wss://resume.example") in actions


@pytest.mark.parametrize("code", sorted(CLOSE_CODES))
def test_every_close_code_row(code: int) -> None:
    proto = make(intents=513 | (1 << 1) | (1 << 15))
    ready(proto)
    actions = proto.on_closed(code, "reason", 5.0, handshake=True)
    row = CLOSE_CODES[code]
    if row.action is CloseAction.FATAL:
        assert proto.state is ShardState.FATAL
        fatal = emitted(actions, FatalClose)[0]
        assert fatal.code == code and fatal.advice and str(code) in fatal.message
        if code == 4014:
            assert "guild_members, message_content" in fatal.advice
        if code == 4011:
            assert "more shards" in fatal.advice
    else:
        assert proto.state is ShardState.BACKING_OFF
        assert emitted(actions, ConnectionLost)
        assert proto.resumable is (row.action is CloseAction.RESUME)


def test_fatal_and_session_ending_codes_per_the_docs() -> None:
    fatal = {c for c, p in CLOSE_CODES.items() if p.action is CloseAction.FATAL}
    assert fatal == {4004, 4010, 4011, 4012, 4013, 4014}
    identify = {c for c, p in CLOSE_CODES.items() if p.action is CloseAction.IDENTIFY}
    assert identify == {4003, 4007, 4009}


def test_unknown_codes_and_dropped_sockets_resume_with_growing_backoff() -> None:
    proto = make(jitter=1.0, backoff_base=1.0)
    ready(proto)
    delays = []
    for attempt in range(4):
        now = 10.0 * (attempt + 1)
        proto.on_closed(None, "", now, handshake=False)
        delays.append(proto.reconnect_at - now)  # type: ignore[operator]
        proto.on_connecting(now)
        proto.on_connected(now)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert proto.resumable
    # RESUMED alone resets nothing: a drop soon after it keeps growing the delay...
    proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 50.0)
    proto.receive(frame(0, {}, 2, "RESUMED"), 50.0)
    proto.on_closed(None, "", 55.0, handshake=False)
    assert proto.reconnect_at == 55.0 + 16.0
    # ...and only a connection that stayed ready for stable_after starts again from the base.
    proto.on_connecting(71.0)
    proto.on_connected(71.0)
    proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 71.0)
    proto.receive(frame(0, {}, 3, "RESUMED"), 71.0)
    proto.on_closed(None, "", 71.0 + proto.settings.stable_after, handshake=False)
    assert proto.reconnect_at == 71.0 + proto.settings.stable_after + 1.0


def test_reconnect_op_closes_resumably_and_reconnects_at_once() -> None:
    proto = make()
    ready(proto)
    actions = proto.receive(frame(7), 2.0)
    assert actions == [Close(RESUMABLE_CLOSE, "gateway asked to reconnect")]
    proto.on_closed(RESUMABLE_CLOSE, "", 2.0, handshake=True)
    assert proto.reconnect_at == 2.0 and proto.resumable


def test_reconnect_before_hello_backs_off() -> None:
    proto = make(jitter=1.0)
    proto.receive(frame(7), 2.0)
    proto.on_closed(RESUMABLE_CLOSE, "", 2.0, handshake=True)
    assert proto.reconnect_at is not None and proto.reconnect_at > 2.0


def test_invalid_session_resumable() -> None:
    proto = make()
    ready(proto)
    actions = proto.receive(frame(9, True), 2.0)
    assert [type(a) for a in actions] == [Emit, Close]
    assert emitted(actions, InvalidSession)[0].resumable
    proto.on_closed(RESUMABLE_CLOSE, "", 2.0, handshake=True)
    assert proto.resumable


def test_invalid_session_not_resumable_waits_then_identifies_on_the_same_connection() -> None:
    proto = make(jitter=0.5)
    ready(proto)
    said = emitted(proto.receive(frame(9, False), 10.0), InvalidSession)
    assert [e.in_a_row for e in said] == [1] and "op 9" in said[0].message
    assert not proto.resumable and proto.state is ShardState.IDENTIFYING
    assert proto.next_deadline() == pytest.approx(13.0)  # 1 + 4 * 0.5 s
    assert not any(isinstance(a, RequestPermit) for a in proto.poll(12.9))
    assert any(isinstance(a, RequestPermit) for a in proto.poll(13.0))
    assert sent(proto.on_permit(13.1), "identify")


def test_commands_wait_for_a_live_session_and_keep_order() -> None:
    proto = make()
    commands = [UpdatePresence("online", [{"name": f"c{i}", "type": 0}]) for i in range(3)]
    for command in commands:
        assert proto.submit(command, 0.5) == []  # not ready yet: queued
    actions = ready(proto) + proto.poll(1.0)
    names = [p["d"]["activities"][0]["name"] for p in sent(actions, "command")]
    assert names == ["c0", "c1", "c2"]


def test_rate_limit_keeps_headroom_for_heartbeats() -> None:
    proto = make(jitter=0.0)
    ready(proto, now=0.0)
    flood = []
    for i in range(200):
        flood += proto.submit(RequestGuildMembers(guild_id=1, query="", limit=0, nonce=str(i)), 0.1)
    assert len(sent(flood, "command")) == 120 - 5 - 1  # the identify used a slot too
    assert proto.next_deadline() == pytest.approx(0.0)  # the heartbeat is due
    assert sent(proto.poll(0.2), "heartbeat")  # not delayed by the flood
    proto.receive(frame(11), 0.3)
    # the gateway may not have seen the window move yet: only the heartbeat goes
    assert [a.kind for a in proto.poll(60.2) if isinstance(a, Send)] == ["heartbeat"]
    proto.receive(frame(11), 60.3)
    later = proto.poll(61.5)  # now it has: the next batch goes, in order
    nonces = [p["d"]["nonce"] for p in sent(later, "command")]
    assert nonces[0] == "114" and nonces == [str(n) for n in range(114, 114 + len(nonces))]


def test_oversized_commands_are_refused_not_sent() -> None:
    proto = make()
    ready(proto)
    big = UpdatePresence("online", [{"name": "x" * 5000, "type": 0}])
    actions = proto.submit(big, 2.0)
    error = emitted(actions, PayloadTooLarge)[0]
    assert error.size > 4096 and error.command == "UPDATE_PRESENCE"
    assert not sent(actions) and not proto.queue


def test_unconfirmed_commands_are_reported_when_the_connection_dies() -> None:
    proto = make(jitter=0.0)
    ready(proto, now=0.0)
    first = proto.submit(UpdatePresence("idle"), 0.1)
    for action in first:
        if isinstance(action, Send):
            proto.on_sent(action)
    for action in proto.poll(0.2):  # heartbeat after it: its ACK confirms the command
        if isinstance(action, Send):
            proto.on_sent(action)
    proto.receive(frame(11), 0.3)
    assert proto.in_flight == []
    for action in proto.submit(UpdatePresence("dnd"), 0.4):
        if isinstance(action, Send):
            proto.on_sent(action)
    failed = emitted(proto.on_closed(None, "", 0.5, handshake=False), CommandFailed)
    assert [f.detail["status"] for f in failed] == ["dnd"]


def test_garbage_becomes_error_events_and_a_broken_stream_resumes() -> None:
    proto = make()
    ready(proto)
    assert emitted(proto.receive(b"{not json", 2.0), DecodeError)
    assert emitted(proto.receive(frame(0, {}, 5, None), 2.0), ProtocolError)
    assert emitted(proto.receive(frame(42), 2.0), ProtocolError)
    assert proto.state is ShardState.READY  # survived all three

    zproto = make(compression="zlib-stream")
    deflate = Deflater()
    zproto.receive(deflate(frame(10, {"heartbeat_interval": INTERVAL_MS})), 1.0)
    actions = zproto.receive(b"\x00garbage\x00\x00\xff\xff", 1.1)
    assert emitted(actions, DecodeError)
    assert [a.code for a in actions if isinstance(a, Close)] == [RESUMABLE_CLOSE]


def test_zlib_stream_reassembles_split_messages() -> None:
    proto = make(compression="zlib-stream")
    deflate = Deflater()
    data = deflate(frame(10, {"heartbeat_interval": INTERVAL_MS}))
    assert proto.receive(data[:5], 1.0) == []
    assert [type(a) for a in proto.receive(data[5:], 1.0)] == [RequestPermit]


def test_voice_dispatches_are_forwarded_for_the_bot_only() -> None:
    proto = make()
    ready(proto)
    mine = frame(0, {"user_id": "99", "session_id": "v"}, 2, "VOICE_STATE_UPDATE")
    other = frame(0, {"user_id": "5", "session_id": "v"}, 3, "VOICE_STATE_UPDATE")
    server = frame(0, {"token": "t", "guild_id": "1", "endpoint": "x"}, 4, "VOICE_SERVER_UPDATE")
    assert any(isinstance(a, Forward) for a in proto.receive(mine, 2.0))
    assert not any(isinstance(a, Forward) for a in proto.receive(other, 2.0))
    assert any(isinstance(a, Forward) for a in proto.receive(server, 2.0))


def test_stop_closes_resumably_with_a_final_checkpoint() -> None:
    proto = make()
    ready(proto)
    proto.receive(frame(0, {}, 9, "TYPING_START"), 2.0)
    actions = proto.stop()
    assert actions == [
        Close(RESUMABLE_CLOSE, "shutting down; will resume"),
        Checkpoint(1, 4, "sess", 9, "wss://resume.example", guilds=0, user_id="99"),
    ]
    assert all(a.code not in (1000, 1001) for a in actions if isinstance(a, Close))


def test_guild_creates_of_listed_guilds_are_published_unparsed() -> None:
    proto = make()
    actions = proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 1.0)
    actions += proto.on_permit(1.0)
    ready_d = {
        "session_id": "s",
        "resume_gateway_url": "wss://r",
        "user": {"id": "99"},
        "guilds": [{"id": "111", "unavailable": True}, {"id": "222", "unavailable": True}],
    }
    proto.receive(frame(0, ready_d, 1, "READY"), 1.0)
    assert proto.status()["guilds"] == 2
    # A body the protocol would choke on if it parsed it: it does not, it knows the guild.
    listed = b'{"t":"GUILD_CREATE","s":2,"op":0,"d":{"roles":[{"id":"222"}],"x":' + b"[" * 2 + b"}"
    actions = proto.receive(listed, 1.1)
    assert [type(a) for a in actions] == [Publish] and proto.seq == 2
    joined = frame(0, {"id": "333", "name": "new", "roles": [{"id": "333"}]}, 3, "GUILD_CREATE")
    proto.receive(joined, 1.2)
    assert proto.status()["guilds"] == 3


def test_the_status_counts_what_metrics_need() -> None:
    """Identifies, resumes, invalid sessions, ACKs, closes by code and dispatches by type,
    with names Discord does not document folded into "other" (docs/metrics.md)."""
    proto = make(jitter=0.0)
    ready(proto, now=0.0)
    proto.receive(frame(0, {"content": "hi"}, 2, "MESSAGE_CREATE"), 0.1)  # the fast path
    proto.receive(frame(0, {"content": "hi"}, 3, "MESSAGE_CREATE"), 0.2)
    proto.receive(frame(0, {}, 4, "NOT_A_REAL_EVENT"), 0.3)
    proto.poll(0.0)
    proto.receive(frame(11), 0.4)  # HEARTBEAT_ACK
    proto.receive(frame(9, True), 0.5)  # INVALID_SESSION, resumable: we close
    proto.on_closed(4000, "", 0.6, handshake=True)  # ours: not counted as a close
    proto.on_connecting(1.0)
    proto.on_connected(1.0)
    proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 1.0)  # RESUME
    proto.on_closed(4000, "", 2.0, handshake=False)  # the gateway's: counted
    proto.on_closed(None, "", 3.0, handshake=False)
    status = proto.status()
    assert status["dispatch_types"] == {"READY": 1, "MESSAGE_CREATE": 2, "other": 1}
    assert (status["identifies"], status["resumes"], status["invalid_sessions"]) == (1, 1, 1)
    assert status["heartbeat_acks"] == 1
    assert status["closes"] == {"4000": 1, "none": 1}


def test_in_a_fleet_a_resume_waits_for_the_supervisors_word() -> None:
    proto = make(ask_before_resume=True)
    proto.restore("sess", 41, "wss://resume.example")
    actions = proto.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 1.0)
    assert [type(a).__name__ for a in actions] == ["RequestResume"] and not sent(actions)
    assert proto.state is ShardState.RESUMING
    assert sent(proto.on_resume_permit(1.1), "resume") == [
        {"op": 6, "d": {"token": "tok", "session_id": "sess", "seq": 41}}
    ]
    assert proto.on_resume_permit(1.2) == []  # one word, one RESUME
