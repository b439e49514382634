"""The voice gateway state machine, fed payloads and times."""

from __future__ import annotations

import orjson
import pytest

from ipc.states import VoiceOutcome
from voiceworker.crypto import XCHACHA
from voiceworker.gateway import (
    VOICE_CLOSE_CODES,
    Close,
    Connected,
    DaveMessage,
    Discover,
    Failed,
    SendText,
    VoiceCredentials,
    VoiceGateway,
    VoiceState,
    Warn,
)

CREDS = VoiceCredentials(
    guild_id=10, user_id=20, session_id="vs", token="vt", endpoint="host:443", channel_id=30
)


def sent(actions: list[object]) -> list[dict[str, object]]:
    return [orjson.loads(a.data) for a in actions if isinstance(a, SendText)]


def frame(op: int, d: object, seq: int | None = None) -> bytes:
    body: dict[str, object] = {"op": op, "d": d}
    if seq is not None:
        body["seq"] = seq
    return orjson.dumps(body)


def connect(gw: VoiceGateway) -> list[object]:
    """Identify, HELLO, READY, discovery, session description: CONNECTED."""
    actions = gw.on_connected(0.0)
    actions += gw.receive(frame(8, {"heartbeat_interval": 13750}, 1), 0.0)
    actions += gw.receive(
        frame(
            2,
            {
                "ssrc": 77,
                "ip": "127.0.0.1",
                "port": 5000,
                "modes": [XCHACHA],
                "heartbeat_interval": 1,
            },
            2,
        ),
        0.1,
    )
    actions += gw.on_discovered("203.0.113.9", 40000)
    actions += gw.receive(
        frame(4, {"mode": XCHACHA, "secret_key": list(range(32)), "dave_protocol_version": 1}, 3),
        0.2,
    )
    return actions


def test_join_sequence() -> None:
    gw = VoiceGateway(CREDS, rng=lambda: 0.5)
    actions = connect(gw)
    messages = sent(actions)
    assert messages[0] == {
        "op": 0,
        "d": {
            "server_id": "10",
            "user_id": "20",
            "session_id": "vs",
            "token": "vt",
            "max_dave_protocol_version": 1,
        },
    }
    assert Discover("127.0.0.1", 5000, 77) in actions
    assert messages[1] == {
        "op": 1,
        "d": {
            "protocol": "udp",
            "data": {"address": "203.0.113.9", "port": 40000, "mode": XCHACHA},
        },
    }
    connected = next(a for a in actions if isinstance(a, Connected))
    assert connected.secret_key == bytes(range(32)) and connected.dave_protocol_version == 1
    assert gw.state is VoiceState.CONNECTED
    assert orjson.loads(gw.speaking().data) == {
        "op": 5,
        "d": {"speaking": 1, "delay": 0, "ssrc": 77},
    }  # type: ignore[union-attr]


def test_heartbeats_carry_seq_ack_and_zombies_resume() -> None:
    gw = VoiceGateway(CREDS, rng=lambda: 0.0)
    connect(gw)
    beat = sent(gw.poll(1.0))[0]
    assert beat["op"] == 3 and beat["d"]["seq_ack"] == 3  # type: ignore[index]
    gw.receive(frame(6, {"t": 1000}), 1.05)
    assert gw.latency == pytest.approx(0.05)
    assert sent(gw.poll(1.0 + 13.75))  # next heartbeat, never ACKed
    closes = [a for a in gw.poll(1.0 + 27.5) if isinstance(a, Close)]
    assert closes and closes[0].code == 4000
    gw.on_closed(4000, 30.0)
    assert gw.state is VoiceState.BACKING_OFF
    resume = sent(gw.on_connected(31.0))[0]
    assert resume == {
        "op": 7,
        "d": {"server_id": "10", "session_id": "vs", "token": "vt", "seq_ack": 3},
    }


def test_binary_dave_frames_update_seq_ack() -> None:
    gw = VoiceGateway(CREDS)
    connect(gw)
    actions = gw.receive(b"\x00\x2a\x19" + b"external-sender", 1.0)
    assert actions == [DaveMessage(25, b"external-sender")] and gw.seq_ack == 42
    assert gw.binary(26, b"kp").data == b"\x1akp"
    assert gw.receive(frame(21, {"transition_id": 1, "protocol_version": 0}, 43), 1.0) == [
        DaveMessage(21, {"transition_id": 1, "protocol_version": 0})
    ]


@pytest.mark.parametrize("code", sorted(VOICE_CLOSE_CODES))
def test_every_voice_close_code(code: int) -> None:
    gw = VoiceGateway(CREDS)
    connect(gw)
    failed = next(a for a in gw.on_closed(code, 5.0) if isinstance(a, Failed))
    expected = VOICE_CLOSE_CODES[code][0].value
    assert failed.outcome == expected and str(code) in failed.message
    if code == 4015:
        assert gw.state is VoiceState.BACKING_OFF and gw.resumable
    if code in (4006, 4003, 4004, 4011):
        assert gw.state is VoiceState.REJOIN
    if code == 4014:
        assert gw.state is VoiceState.WAITING_SERVER
    if code in (4017, 4021, 4022):
        assert gw.state is VoiceState.DISCONNECTED


def test_4009_resumes_once_then_rejoins() -> None:
    gw = VoiceGateway(CREDS)
    connect(gw)
    assert gw.on_closed(4009, 1.0)[0].outcome == "resume"  # type: ignore[union-attr]
    gw.on_connected(1.1)
    assert gw.on_closed(4009, 2.0)[0].outcome == "rejoin"  # type: ignore[union-attr]


def test_region_move_identifies_at_the_new_endpoint() -> None:
    gw = VoiceGateway(CREDS)
    connect(gw)
    gw.new_server("new-token", "other-host:443")
    assert gw.credentials.url() == "wss://other-host:443/?v=8"
    identify = sent(gw.on_connected(5.0))[0]
    assert identify["op"] == 0 and identify["d"]["token"] == "new-token"  # type: ignore[index]
    assert "vt" not in repr(gw.credentials)


def test_garbage_is_ignored() -> None:
    gw = VoiceGateway(CREDS)
    connect(gw)
    said = gw.receive(b"{nope", 1.0)
    assert len(said) == 1 and isinstance(said[0], Warn) and "not JSON" in said[0].message
    assert gw.receive(b"\x00", 1.0) == []  # a short binary frame: not even a DAVE op
    assert gw.state is VoiceState.CONNECTED


def test_udp_loss_identifies_again_instead_of_resuming() -> None:
    gw = VoiceGateway(CREDS, rng=lambda: 0.0)
    connect(gw)
    closes = [a for a in gw.udp_lost() if isinstance(a, Close)]
    assert closes and closes[0].code == 4000
    failed = gw.on_closed(4000, 5.0)
    assert isinstance(failed[0], Failed) and failed[0].outcome is VoiceOutcome.REIDENTIFY
    assert gw.state is VoiceState.BACKING_OFF  # the session loop reconnects in place
    again = sent(gw.on_connected(6.0))[0]
    assert again["op"] == 0  # IDENTIFY, not RESUME: new UDP socket, discovery and key


def test_the_voice_state_table_covers_every_state_the_gateway_takes() -> None:
    from voiceworker.gateway import TRANSITIONS

    process_states = {s for s in VoiceState} - {
        VoiceState.CONNECTING,  # the supervisor's and the status's words, not the gateway's
        VoiceState.JOINING,
        VoiceState.REJOINING,
        VoiceState.LEAVING,
        VoiceState.FAILED,
    }
    assert set(TRANSITIONS) == process_states
    gw = VoiceGateway(CREDS)
    with pytest.raises(AssertionError, match="illegal voice transition disconnected -> connected"):
        gw.state = VoiceState.CONNECTED  # only a session description or RESUMED leads there
