"""Property tests: the gateway core and its inflators fed generated garbage and hostile
sequences raise nothing, and keep their invariants (seq never moves back, no spin)."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shards.inflate import InflateError, make_inflator
from shards.protocol import (
    Action,
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

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
OPS = st.sampled_from([0, 1, 7, 9, 10, 11, 99, -1]) | json_values
TYPES = st.sampled_from(
    ["READY", "RESUMED", "GUILD_CREATE", "GUILD_DELETE", "VOICE_STATE_UPDATE",
     "VOICE_SERVER_UPDATE", "MESSAGE_CREATE"]
) | json_values  # fmt: skip
FIELDS = {
    "session_id": json_values | st.text(min_size=1, max_size=40),
    "resume_gateway_url": json_values | st.sampled_from(["wss://ok.example", "http://x"]),
    "heartbeat_interval": json_values | st.sampled_from([41250, 0, -1, 1e300]),
    "user": json_values | st.fixed_dictionaries({"id": json_values}),
    "guilds": json_values | st.lists(st.fixed_dictionaries({"id": json_values}), max_size=3),
    "id": json_values,
    "user_id": json_values,
    "guild_id": json_values,
}
payload_d = st.one_of(json_values, st.fixed_dictionaries({}, optional=FIELDS))
payloads = st.builds(
    lambda op, t, s, d: orjson.dumps({"op": op, "t": t, "s": s, "d": d}),
    OPS,
    TYPES,
    st.none() | st.integers(min_value=-5, max_value=2**63) | json_values,
    payload_d,
)
messages = payloads | st.binary(max_size=64) | st.text(max_size=64)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("message"), messages),
        st.tuples(st.just("permit"), st.none()),
        st.tuples(st.just("closed"), st.none() | st.integers(min_value=1000, max_value=4999)),
        st.tuples(st.just("connect"), st.none()),
        st.tuples(st.just("tick"), st.floats(min_value=0, max_value=120)),
    ),
    max_size=40,
)
ACTIONS = (Send, Close, Publish, Emit, Checkpoint, RequestPermit, Forward)


def run(proto: GatewayProtocol, script: list[tuple[str, Any]]) -> None:
    now = 0.0
    connected = True
    last_seq: int | None = None
    session = proto.session_id
    for kind, value in script:
        actions: list[Action] = []
        if kind == "message" and connected:
            actions = proto.receive(value, now)
        elif kind == "permit":
            actions = proto.on_permit(now)
        elif kind == "closed" and connected:
            actions = proto.on_closed(value, "", now, handshake=value is not None)
            connected = False
        elif kind == "connect" and not connected and proto.state is ShardState.BACKING_OFF:
            assert proto.reconnect_at is not None
            now = max(now, proto.reconnect_at)
            proto.on_connecting(now)
            proto.on_connected(now)
            connected = True
        elif kind == "tick":
            now += value
            if connected:
                actions = proto.poll(now)
        assert all(isinstance(a, ACTIONS) for a in actions)
        assert isinstance(proto.state, ShardState)
        if proto.session_id != session:
            session, last_seq = proto.session_id, None
        if proto.seq is not None and last_seq is not None and proto.session_id == session:
            assert proto.seq >= last_seq, "the session's seq moved back"
        last_seq = proto.seq
        deadline = proto.next_deadline()
        assert deadline is None or deadline == deadline  # never NaN


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, st.floats(min_value=0, max_value=1))
def test_the_gateway_core_survives_any_server(script: list[tuple[str, Any]], jitter: float) -> None:
    settings_ = ShardSettings(token="t", shard_id=0, shard_count=1, intents=1, compression="none")
    proto = GatewayProtocol(settings_, rng=lambda: jitter)
    proto.on_connecting(0.0)
    proto.on_connected(0.0)
    run(proto, script)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=200), max_size=10),
    st.sampled_from(["zlib-stream", "zstd-stream", "none"]),
)
def test_inflators_raise_only_inflate_errors(chunks: list[bytes], compression: str) -> None:
    inflator = make_inflator(compression, max_size=4096)
    for chunk in chunks:
        try:
            out = inflator.feed(chunk)
        except InflateError:
            return
        assert out is None or len(out) <= 4096


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_a_corrupted_zlib_stream_is_an_inflate_error(noise: bytes) -> None:
    deflate = zlib.compressobj()
    good = deflate.compress(b'{"op":11}') + deflate.flush(zlib.Z_SYNC_FLUSH)
    inflator = make_inflator("zlib-stream", max_size=4096)
    assert inflator.feed(good) == b'{"op":11}'
    try:
        inflator.feed(noise + b"\x00\x00\xff\xff")
    except InflateError:
        pass
