"""The voice gateway core against a hostile server (issue 12): every field of HELLO, READY
and the session description wrong in type, range or presence ends the session with the
reason, or is ignored with a warning; nothing raises."""

from __future__ import annotations

from typing import Any

import pytest

from tests.voiceworker.test_gateway import CREDS, connect, frame
from voiceworker.crypto import XCHACHA
from voiceworker.gateway import (
    Close,
    Connected,
    Discover,
    Failed,
    VoiceGateway,
    VoiceState,
    Warn,
)

GOOD_READY: dict[str, Any] = {"ssrc": 77, "ip": "127.0.0.1", "port": 5000, "modes": [XCHACHA]}
GOOD_DESCRIPTION: dict[str, Any] = {
    "mode": XCHACHA,
    "secret_key": list(range(32)),
    "dave_protocol_version": 1,
}


def to_selecting(gw: VoiceGateway) -> None:
    gw.on_connected(0.0)
    gw.receive(frame(8, {"heartbeat_interval": 13750}), 0.0)
    gw.receive(frame(2, GOOD_READY), 0.1)
    gw.on_discovered("203.0.113.9", 40000)
    assert gw.state is VoiceState.SELECTING


@pytest.mark.parametrize("interval", ["nan", 0, -1, 1e12, "inf", None, True, [1]])
def test_an_insane_hello_interval_fails_and_closes(interval: Any) -> None:
    gw = VoiceGateway(CREDS)
    gw.on_connected(0.0)
    actions = gw.receive(frame(8, {"heartbeat_interval": interval}), 0.0)
    failed = [a for a in actions if isinstance(a, Failed)]
    assert failed and "heartbeat_interval" in failed[0].message
    assert any(isinstance(a, Close) for a in actions)
    assert gw.next_deadline() is None  # no heartbeat scheduled from it
    gw.on_closed(4000, 0.1)
    assert gw.state is VoiceState.REJOIN  # not "closed by us" resuming nothing


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"ssrc": "x"}, "ssrc"),
        ({"ssrc": -1}, "ssrc"),
        ({"ssrc": 2**32}, "ssrc"),
        ({"ip": "no.such.host.invalid"}, "ip"),
        ({"ip": 5}, "ip"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": "5000"}, "port"),
        ({"modes": "aead"}, "modes"),
        ({"modes": ["xsalsa20_poly1305"]}, "no common encryption mode"),
        ({"modes": None}, "modes"),
    ],
)
def test_a_bad_ready_field_fails_the_session_naming_it(change: dict[str, Any], named: str) -> None:
    gw = VoiceGateway(CREDS)
    gw.on_connected(0.0)
    gw.receive(frame(8, {"heartbeat_interval": 13750}), 0.0)
    actions = gw.receive(frame(2, {**GOOD_READY, **change}), 0.1)
    assert not any(isinstance(a, Discover) for a in actions)
    failed = [a for a in actions if isinstance(a, Failed)]
    assert failed and failed[0].outcome == "stop" and named in failed[0].message
    gw.on_closed(1000, 0.2)
    assert gw.state is VoiceState.DISCONNECTED  # stop, not a resume of nothing


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"secret_key": list(range(16))}, "secret_key"),
        ({"secret_key": 32}, "secret_key"),
        ({"secret_key": [256] * 32}, "secret_key"),
        ({"secret_key": [True] * 32}, "secret_key"),
        ({"secret_key": "k" * 32}, "secret_key"),
        ({"mode": "aead_aes256_gcm_rtpsize"}, "mode"),  # not the one we selected
        ({"mode": "xsalsa20_poly1305"}, "mode"),
        ({"dave_protocol_version": 99}, "dave_protocol_version"),
        ({"dave_protocol_version": "1"}, "dave_protocol_version"),
    ],
)
def test_a_bad_session_description_fails_the_session(change: dict[str, Any], named: str) -> None:
    gw = VoiceGateway(CREDS)
    to_selecting(gw)
    actions = gw.receive(frame(4, {**GOOD_DESCRIPTION, **change}), 0.2)
    assert not any(isinstance(a, Connected) for a in actions)  # no all-zero key, no audio
    failed = [a for a in actions if isinstance(a, Failed)]
    assert failed and named in failed[0].message
    assert not gw.resumable


def test_a_description_out_of_turn_is_ignored() -> None:
    gw = VoiceGateway(CREDS)
    connect(gw)
    actions = gw.receive(frame(4, {**GOOD_DESCRIPTION, "secret_key": [0] * 32}), 5.0)
    assert [type(a) for a in actions] == [Warn]  # the key in use is not replaced


@pytest.mark.parametrize("payload", ["[]", '{"op": "2"}', '{"op": [1]}', '{"op": 5, "d": 7}'])
def test_malformed_messages_are_warned_about(payload: str) -> None:
    gw = VoiceGateway(CREDS)
    connect(gw)
    actions = gw.receive(payload, 1.0)
    assert all(isinstance(a, Warn) for a in actions) and actions
    assert gw.state is VoiceState.CONNECTED


def test_dave_ops_before_the_session_are_buffered_within_a_bound() -> None:
    from voiceworker.dave import MAX_EARLY, DaveDriver

    dave = DaveDriver(20, 30)
    for _ in range(MAX_EARLY * 10):
        dave.receive(27, b"\x00" * 100)
    assert len(dave._early) == MAX_EARLY
    dave.receive(11, {"user_ids": ["1", "abc"]})  # a non-numeric id: ignored, no exception
    dave.receive(13, {"user_id": {"x": 1}})
    assert dave.users == set()


def test_a_forged_keepalive_echo_cannot_switch_udp_loss_detection_off() -> None:
    from voiceworker.session import VoiceSession

    session = VoiceSession(CREDS, udp_silence_limit=3)
    session._keepalives = 5
    session._on_udp(b"\xff" * 8)  # a counter we never sent
    assert session._keepalive_echoed == 0
    session._on_udp((4).to_bytes(8, "little"))
    assert session._keepalive_echoed == 4
    session._on_udp((2).to_bytes(8, "little"))  # an old echo does not move it back
    assert session._keepalive_echoed == 4
