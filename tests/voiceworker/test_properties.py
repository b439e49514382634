"""Property tests: the voice gateway core, DAVE driver, RTP, transport decryption and IP
discovery fed generated garbage raise nothing but their documented errors."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.shards.test_protocol_properties import json_values
from tests.voiceworker.test_gateway import CREDS
from voiceworker.crypto import AES_GCM, XCHACHA, DecryptError, TransportCipher, aes_gcm_available
from voiceworker.dave import DaveDriver
from voiceworker.discovery import DiscoveryError, parse_response
from voiceworker.gateway import VoiceGateway, VoiceState
from voiceworker.rtp import RtpError, parse_rtp

VOICE_FIELDS = {
    "heartbeat_interval": json_values | st.sampled_from([13750, 0, -1]),
    "ssrc": json_values | st.integers(min_value=0, max_value=2**32),
    "ip": json_values | st.sampled_from(["127.0.0.1", "::1", "no.host.invalid"]),
    "port": json_values | st.integers(min_value=-1, max_value=70000),
    "modes": json_values | st.just([XCHACHA]),
    "mode": json_values | st.just(XCHACHA),
    "secret_key": json_values | st.lists(st.integers(min_value=-1, max_value=256), max_size=33),
    "dave_protocol_version": json_values | st.integers(min_value=-1, max_value=3),
    "user_id": json_values | st.text(max_size=5),
    "user_ids": json_values | st.lists(json_values, max_size=3),
    "transition_id": json_values,
    "protocol_version": json_values,
    "epoch": json_values,
}
voice_d = json_values | st.fixed_dictionaries({}, optional=VOICE_FIELDS)
voice_ops = st.sampled_from([2, 4, 5, 6, 8, 9, 11, 13, 21, 22, 24, 99]) | json_values
voice_messages = (
    st.builds(
        lambda op, d, seq: orjson.dumps({"op": op, "d": d, "seq": seq}).decode(),
        voice_ops,
        voice_d,
        st.none() | st.integers(min_value=-1, max_value=2**64 - 1),
    )
    | st.binary(max_size=80)
    | st.text(max_size=40)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("message"), voice_messages),
            st.tuples(st.just("discovered"), st.none()),
            st.tuples(st.just("closed"), st.none() | st.integers(min_value=1000, max_value=4999)),
            st.tuples(st.just("tick"), st.floats(min_value=0, max_value=60)),
        ),
        max_size=30,
    )
)
def test_the_voice_gateway_core_survives_any_server(script: list[tuple[str, Any]]) -> None:
    gw = VoiceGateway(CREDS, rng=lambda: 0.5)
    gw.on_connected(0.0)
    now = 0.0
    for kind, value in script:
        if kind == "message":
            gw.receive(value, now)
        elif kind == "discovered" and gw.state is VoiceState.DISCOVERING:
            gw.on_discovered("203.0.113.1", 5000)
        elif kind == "closed":
            gw.on_closed(value, now)
            if gw.state is VoiceState.BACKING_OFF:
                gw.on_connected(now)
        elif kind == "tick":
            now += value
            gw.poll(now)
        assert isinstance(gw.state, VoiceState)
        if gw.state is VoiceState.CONNECTED and gw.session.secret_key:
            assert len(gw.session.secret_key) == 32


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([11, 13, 21, 22, 24, 25, 27, 29, 30, 99]),
            json_values | st.binary(max_size=120),
        ),
        max_size=20,
    ),
    st.sampled_from([0, 1]),
)
def test_the_dave_driver_survives_any_server(script: list[tuple[int, Any]], version: int) -> None:
    dave = DaveDriver(20, 30)
    for op, payload in script[: len(script) // 2]:
        dave.receive(op, payload)  # before the session description
    dave.start(version)
    for op, payload in script[len(script) // 2 :]:
        dave.receive(op, payload)
    assert dave.encrypt(b"\x01\x02\x03")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=100))
def test_rtp_parsing_raises_only_rtp_errors(packet: bytes) -> None:
    try:
        header = parse_rtp(packet)
    except RtpError:
        return
    assert header.unencrypted_size <= len(packet)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([XCHACHA, AES_GCM]))
def test_transport_decryption_raises_only_decrypt_errors(packet: bytes, mode: str) -> None:
    if mode == AES_GCM and not aes_gcm_available():
        mode = XCHACHA
    cipher = TransportCipher(mode, bytes(range(32)))
    try:
        cipher.decrypt(packet)
    except DecryptError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=70, max_size=80) | st.binary(max_size=10))
def test_ip_discovery_parsing_raises_only_discovery_errors(reply: bytes) -> None:
    try:
        address, port = parse_response(reply, 77)
    except DiscoveryError:
        return
    assert address and 0 <= port <= 65535
