"""The voice gateway (v8) for one guild's session, without I/O.

Like the shard's protocol: messages and time in, actions out. The loop owns the websocket,
the UDP socket and the clocks; this object decides. DAVE's binary opcodes are handed out
as :class:`DaveMessage` actions for the DAVE driver.

Source: discord.com/developers/docs/topics/voice-connections (v8: ``seq_ack``, binary frames
``[seq u16][opcode u8][payload]`` from the server and ``[opcode u8][payload]`` to it).
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from conn.actions import Close
from conn.pacemaker import Beat, Pacemaker
from ipc.states import VoiceOutcome, VoiceState
from voiceworker.crypto import choose_mode

__all__ = [
    "RESUMABLE_CLOSE",
    "VOICE_CLOSE_CODES",
    "Close",
    "Connected",
    "DaveMessage",
    "Discover",
    "Failed",
    "Resumed",
    "SendBinary",
    "SendText",
    "Speaking",
    "VoiceAction",
    "VoiceCredentials",
    "VoiceGateway",
    "VoiceState",
    "Warn",
]

RESUMABLE_CLOSE = 4000  # a close the server lets us resume after
# HELLO's heartbeat_interval (Discord sends 13,750 ms) must fall in here, in seconds.
MIN_HEARTBEAT_INTERVAL = 1.0
MAX_HEARTBEAT_INTERVAL = 600.0
SECRET_KEY_SIZE = 32


_V = VoiceState
# What a close can lead to, from any state: resume after a backoff, rejoin, wait for a new
# server, or the end.
_CLOSES = {_V.BACKING_OFF, _V.REJOIN, _V.WAITING_SERVER, _V.DISCONNECTED}
# Legal transitions (like the shard's): anything else is a bug in this module, not the peer.
TRANSITIONS: dict[VoiceState, set[VoiceState]] = {
    _V.DISCONNECTED: {_V.IDENTIFYING, _V.RESUMING, *_CLOSES},
    _V.IDENTIFYING: {_V.DISCOVERING, *_CLOSES},
    _V.DISCOVERING: {_V.SELECTING, *_CLOSES},
    _V.SELECTING: {_V.CONNECTED, *_CLOSES},
    _V.RESUMING: {_V.CONNECTED, *_CLOSES},
    _V.CONNECTED: set(_CLOSES),
    _V.BACKING_OFF: {_V.IDENTIFYING, _V.RESUMING, *_CLOSES},
    _V.REJOIN: {_V.IDENTIFYING, *_CLOSES},  # a new server (a move) starts afresh
    _V.WAITING_SERVER: {_V.IDENTIFYING, *_CLOSES},
}


# Close codes (topics/opcodes-and-status-codes#voice) and what they call for.
VOICE_CLOSE_CODES: dict[int, tuple[VoiceOutcome, str]] = {
    4001: (VoiceOutcome.STOP, "unknown opcode sent (a bug in this client)"),
    4002: (VoiceOutcome.STOP, "the server could not decode a payload (a bug in this client)"),
    4003: (VoiceOutcome.REJOIN, "not authenticated"),
    4004: (VoiceOutcome.REJOIN, "authentication failed (wrong token)"),
    4005: (VoiceOutcome.STOP, "already authenticated (a bug in this client)"),
    4006: (VoiceOutcome.REJOIN, "session no longer valid"),
    4009: (VoiceOutcome.RESUME, "session timed out"),  # once; a second time: rejoin
    4011: (VoiceOutcome.REJOIN, "server not found"),
    4012: (VoiceOutcome.STOP, "unknown protocol"),
    4014: (VoiceOutcome.WAIT_SERVER, "disconnected (kicked, channel deleted, or moved)"),
    4015: (VoiceOutcome.RESUME, "voice server crashed"),
    4016: (VoiceOutcome.STOP, "unknown encryption mode"),
    4017: (VoiceOutcome.STOP, "E2EE (DAVE) required but not offered"),
    4020: (VoiceOutcome.STOP, "bad request"),
    4021: (VoiceOutcome.STOP, "disconnected: rate limited"),
    4022: (VoiceOutcome.STOP, "disconnected: call terminated"),
}


@dataclass(frozen=True)
class VoiceCredentials:
    """What the shard collected: VOICE_STATE_UPDATE's session id, VOICE_SERVER_UPDATE's
    token and endpoint, and who we are."""

    guild_id: int
    user_id: int
    session_id: str
    token: str
    endpoint: str
    channel_id: int  # the voice channel: DAVE's MLS group is named after it

    @classmethod
    def from_gateway(cls, voice_state: Any, voice_server: Any) -> VoiceCredentials:
        """From the ``d`` of the bot's VOICE_STATE_UPDATE (user, session, channel) and of
        the guild's VOICE_SERVER_UPDATE (token, endpoint) that answered op 4."""
        return cls(
            int(voice_state["guild_id"]),
            int(voice_state["user_id"]),
            str(voice_state["session_id"]),
            str(voice_server["token"]),
            str(voice_server["endpoint"]),
            int(voice_state["channel_id"]),
        )

    def url(self) -> str:
        host = self.endpoint.removeprefix("wss://").rstrip("/")
        return f"wss://{host}/?v=8"

    def __repr__(self) -> str:  # the token stays out of logs
        return f"VoiceCredentials(guild_id={self.guild_id}, endpoint={self.endpoint!r})"


@dataclass(slots=True)
class SendText:
    """A JSON message on the voice websocket."""

    data: bytes


@dataclass(slots=True)
class SendBinary:
    data: bytes  # [opcode u8][payload]


@dataclass(slots=True)
class Discover:
    """Run UDP IP discovery against ``ip:port`` for ``ssrc``, then call ``on_discovered``."""

    ip: str
    port: int
    ssrc: int


@dataclass(slots=True)
class Connected:
    """Audio may flow: the mode and key for transport encryption, the DAVE version."""

    mode: str
    secret_key: bytes
    dave_protocol_version: int
    ssrc: int


@dataclass(slots=True)
class DaveMessage:
    """A DAVE opcode (21-31) or a membership change (11 clients connect, 13 client
    disconnect) for the DAVE driver; ``payload`` is JSON ``d`` or binary."""

    op: int
    payload: Any


@dataclass(slots=True)
class Speaking:
    """Another member's SSRC (op 5 from the server): which user a stream of packets is."""

    user_id: int
    ssrc: int


@dataclass(slots=True)
class Failed:
    """The connection cannot continue as is: ``outcome`` says what happens next."""

    code: int | None
    outcome: VoiceOutcome
    message: str


@dataclass(slots=True)
class Resumed:
    """RESUMED: the session is whole again on a new connection."""


@dataclass(slots=True)
class Warn:
    """Something from the server was ignored; the loop logs ``message``."""

    message: str


VoiceAction = (
    SendText
    | SendBinary
    | Close
    | Discover
    | Connected
    | DaveMessage
    | Speaking
    | Failed
    | Warn
    | Resumed
)


@dataclass
class _Session:
    ssrc: int = 0
    server_ip: str = ""
    server_port: int = 0
    modes: list[str] = field(default_factory=list)
    mode: str = ""
    secret_key: bytes = b""
    dave_version: int = 0
    timeouts: int = 0  # 4009 closes in a row


class VoiceGateway:
    def __init__(
        self,
        credentials: VoiceCredentials,
        *,
        max_dave_protocol_version: int = 1,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.credentials = credentials
        self.max_dave = max_dave_protocol_version
        self.rng = rng
        self._state = VoiceState.DISCONNECTED
        self.session = _Session()
        self.seq_ack = -1  # last seq seen from the server
        self.pacemaker = Pacemaker(lambda: self.rng())
        self.resumable = False  # True once connected: a drop resumes
        self._closing: VoiceOutcome | None = None

    # -- connection lifecycle -------------------------------------------------------------

    @property
    def state(self) -> VoiceState:
        return self._state

    @state.setter
    def state(self, new: VoiceState) -> None:
        if new is not self._state and new not in TRANSITIONS[self._state]:
            raise AssertionError(f"illegal voice transition {self._state} -> {new}")
        self._state = new

    def on_connected(self, now: float) -> list[VoiceAction]:
        """The websocket is open: RESUME a live session, else IDENTIFY."""
        self.pacemaker.stop()
        self._closing = None
        c = self.credentials
        if self.resumable:
            self.state = VoiceState.RESUMING
            return [
                self._json(
                    7,
                    {
                        "server_id": str(c.guild_id),
                        "session_id": c.session_id,
                        "token": c.token,
                        "seq_ack": self.seq_ack,
                    },
                )
            ]
        self.state = VoiceState.IDENTIFYING
        return [
            self._json(
                0,
                {
                    "server_id": str(c.guild_id),
                    "user_id": str(c.user_id),
                    "session_id": c.session_id,
                    "token": c.token,
                    "max_dave_protocol_version": self.max_dave,
                },
            )
        ]

    def on_closed(self, code: int | None, now: float) -> list[VoiceAction]:
        """The websocket closed. Decide: resume, rejoin, wait for a new server, or stop."""
        self.pacemaker.stop()
        if self._closing is VoiceOutcome.REIDENTIFY:  # UDP went silent: start afresh
            self._closing = None
            self.resumable = False
            self.seq_ack = -1
            self.state = VoiceState.BACKING_OFF
            return [Failed(code, VoiceOutcome.REIDENTIFY, "UDP went silent: identifying again")]
        outcome: VoiceOutcome
        if self._closing is not None:  # we closed it on purpose (zombie): resume
            outcome, meaning = self._closing, "closed by us"
        elif code is None or code < 4000:
            outcome, meaning = VoiceOutcome.RESUME, "connection lost"
        else:
            outcome, meaning = VOICE_CLOSE_CODES.get(code, (VoiceOutcome.RESUME, "unknown code"))
        if code == 4009:
            self.session.timeouts += 1
            if self.session.timeouts > 1:
                outcome = VoiceOutcome.REJOIN  # resumed once already: start over
        if outcome is VoiceOutcome.RESUME and not self.resumable:
            outcome = VoiceOutcome.REJOIN  # nothing to resume yet
        self.state = {
            VoiceOutcome.RESUME: VoiceState.BACKING_OFF,
            VoiceOutcome.REJOIN: VoiceState.REJOIN,
            VoiceOutcome.WAIT_SERVER: VoiceState.WAITING_SERVER,
            VoiceOutcome.STOP: VoiceState.DISCONNECTED,
        }[outcome]
        if outcome is not VoiceOutcome.RESUME:
            self.resumable = False
        return [Failed(code, outcome, f"voice gateway closed {code} ({meaning})")]

    def udp_lost(self) -> list[VoiceAction]:
        """UDP keepalives stopped coming back: close, then identify afresh (a new UDP
        socket, IP discovery and key), the same credentials still being valid."""
        self._closing = VoiceOutcome.REIDENTIFY
        return [Close(RESUMABLE_CLOSE, "UDP silent: reconnecting")]

    def new_server(self, token: str, endpoint: str) -> None:
        """A VOICE_SERVER_UPDATE (region move): identify afresh at the new endpoint."""
        c = self.credentials
        self.credentials = VoiceCredentials(
            c.guild_id, c.user_id, c.session_id, token, endpoint, c.channel_id
        )
        self.resumable = False
        self.seq_ack = -1
        self.state = VoiceState.DISCONNECTED

    # -- receiving ------------------------------------------------------------------------

    def receive(self, message: bytes | str, now: float) -> list[VoiceAction]:
        if isinstance(message, bytes) and message[:1] != b"{":
            return self._receive_binary(message)
        try:
            payload = orjson.loads(message)
            op = payload["op"]
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
            return [Warn(f"voice gateway sent a message not JSON with an op: {_cut(message)}")]
        if type(op) is not int:
            return [Warn(f"voice gateway sent an op that is not an integer: {_cut(op)}")]
        seq = payload.get("seq")
        if type(seq) is int and 0 <= seq < 2**63:
            self.seq_ack = seq
        d = payload.get("d")
        handler = _HANDLERS.get(op)
        if handler is not None:
            return handler(self, d, now)
        if 21 <= op <= 31 or op in (11, 13):  # DAVE, and the call's membership it needs
            return [DaveMessage(op, d)]
        return []

    def _receive_binary(self, data: bytes) -> list[VoiceAction]:
        if len(data) < 3:
            return []
        self.seq_ack = int.from_bytes(data[:2], "big")
        return [DaveMessage(data[2], data[3:])]

    def _on_hello(self, d: Any, now: float) -> list[VoiceAction]:
        value = d.get("heartbeat_interval") if isinstance(d, dict) else None
        interval = math.nan
        if isinstance(value, int | float) and type(value) is not bool and math.isfinite(value):
            interval = value / 1000
        if not MIN_HEARTBEAT_INTERVAL <= interval <= MAX_HEARTBEAT_INTERVAL:
            # A broken server: close, and resume (or rejoin) after the loop's backoff.
            outcome = VoiceOutcome.RESUME if self.resumable else VoiceOutcome.REJOIN
            self._closing = outcome
            return [
                Failed(
                    None,
                    outcome,
                    f"voice HELLO's heartbeat_interval {_cut(value)} is not a number of "
                    f"milliseconds from {MIN_HEARTBEAT_INTERVAL * 1000:.0f} to "
                    f"{MAX_HEARTBEAT_INTERVAL * 1000:.0f}",
                ),
                Close(RESUMABLE_CLOSE, "bad HELLO"),
            ]
        self.pacemaker.start(interval, now)
        return []

    def _on_ready(self, d: Any, now: float) -> list[VoiceAction]:
        s = self.session
        try:
            s.ssrc, s.server_ip, s.server_port, s.modes = _parse_ready(d)
            s.mode = choose_mode(s.modes)
        except ValueError as exc:
            return self._fail_and_close(f"unusable READY: {exc}")
        self.state = VoiceState.DISCOVERING
        return [Discover(s.server_ip, s.server_port, s.ssrc)]

    def _fail_and_close(self, message: str) -> list[VoiceAction]:
        """The server sent what cannot work: end the session with the reason (a retry of
        the same server would get the same)."""
        self.state = VoiceState.DISCONNECTED
        self._closing = VoiceOutcome.STOP
        return [Failed(None, VoiceOutcome.STOP, message), Close(1000, "unusable server data")]

    def on_discovered(self, address: str, port: int) -> list[VoiceAction]:
        """IP discovery answered: SELECT PROTOCOL with our external address."""
        self.state = VoiceState.SELECTING
        data = {"address": address, "port": port, "mode": self.session.mode}
        return [self._json(1, {"protocol": "udp", "data": data})]

    def _on_session_description(self, d: Any, now: float) -> list[VoiceAction]:
        s = self.session
        if self.state is not VoiceState.SELECTING:
            return [Warn(f"a session description while {self.state.value}: ignored")]
        try:
            s.secret_key, s.dave_version = _parse_description(d, s.mode, self.max_dave)
        except ValueError as exc:
            return self._fail_and_close(f"unusable session description: {exc}")
        self.state = VoiceState.CONNECTED
        self.resumable = True
        self.session.timeouts = 0
        return [Connected(s.mode, s.secret_key, s.dave_version, s.ssrc)]

    def _on_resumed(self, d: Any, now: float) -> list[VoiceAction]:
        if self.state is not VoiceState.RESUMING:
            return [Warn(f"RESUMED while {self.state.value}: ignored")]
        self.state = VoiceState.CONNECTED
        return [Resumed()]

    def discovery_failed(self, message: str, *, retry: bool) -> list[VoiceAction]:
        """UDP IP discovery could not complete: close, then rejoin (``retry``: a new server
        may answer) or stop (nothing we can offer will work)."""
        outcome = VoiceOutcome.REJOIN if retry else VoiceOutcome.STOP
        self._closing = outcome
        return [Failed(None, outcome, message), Close(1000, "IP discovery failed")]

    def _on_speaking(self, d: Any, now: float) -> list[VoiceAction]:
        try:
            return [Speaking(int(d["user_id"]), int(d["ssrc"]))]
        except (KeyError, TypeError, ValueError, OverflowError):
            return [Warn(f"unusable SPEAKING: {_cut(d)}")]

    def _on_heartbeat_ack(self, d: Any, now: float) -> list[VoiceAction]:
        self.pacemaker.acked(now)
        return []

    def speaking(self, flags: int = 1) -> VoiceAction:
        """op 5: must go out (with flags) before the first audio packet."""
        return self._json(5, {"speaking": flags, "delay": 0, "ssrc": self.session.ssrc})

    # -- time -----------------------------------------------------------------------------

    def poll(self, now: float) -> list[VoiceAction]:
        beat = self.pacemaker.due(now) if self._closing is None else None
        if beat is None:
            return []
        if beat is Beat.ZOMBIE:
            self._closing = VoiceOutcome.RESUME
            return [Close(RESUMABLE_CLOSE, "no heartbeat ACK: reconnecting to resume")]
        self.pacemaker.sent(now)
        return [self._json(3, {"t": int(now * 1000), "seq_ack": self.seq_ack})]

    @property
    def latency(self) -> float | None:
        """Seconds from the last heartbeat to its ACK."""
        return self.pacemaker.latency

    def next_deadline(self) -> float | None:
        return None if self._closing is not None else self.pacemaker.deadline

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _json(op: int, d: Any) -> SendText:
        return SendText(orjson.dumps({"op": op, "d": d}))

    @staticmethod
    def binary(op: int, payload: bytes) -> SendBinary:
        """A client -> server binary message (DAVE ops 26 and 28)."""
        return SendBinary(bytes((op,)) + payload)


def _cut(value: Any, limit: int = 80) -> str:
    """A server's value for a log line: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _int_in(d: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = d.get(key)
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{key} {_cut(value)} is not an integer from {lo} to {hi}")
    return value


def _parse_ready(d: Any) -> tuple[int, str, int, list[str]]:
    """READY's (ssrc, ip, port, modes), every field checked; raises ValueError naming one."""
    if not isinstance(d, dict):
        raise ValueError(f"READY is {_cut(d)}, not an object")
    ssrc = _int_in(d, "ssrc", 0, 2**32 - 1)
    ip = d.get("ip")
    try:
        address = str(ipaddress.ip_address(ip if isinstance(ip, str) else ""))
    except ValueError:
        raise ValueError(f"ip {_cut(ip)} is not an IP address") from None
    port = _int_in(d, "port", 1, 65535)
    modes = d.get("modes")
    if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
        raise ValueError(f"modes {_cut(modes)} is not a list of mode names")
    return ssrc, address, port, modes


def _parse_description(d: Any, selected: str, max_dave: int) -> tuple[bytes, int]:
    """The session description's (secret_key, dave_protocol_version), checked against the
    mode we selected; raises ValueError naming the field."""
    if not isinstance(d, dict):
        raise ValueError(f"it is {_cut(d)}, not an object")
    if d.get("mode") != selected:
        raise ValueError(f"mode {_cut(d.get('mode'))} is not the mode we selected ({selected})")
    key = d.get("secret_key")
    if (
        not isinstance(key, list)
        or len(key) != SECRET_KEY_SIZE
        or not all(type(b) is int and 0 <= b <= 255 for b in key)
    ):
        raise ValueError(f"secret_key {_cut(key)} is not a list of {SECRET_KEY_SIZE} bytes")
    version = d.get("dave_protocol_version", 0)
    if type(version) is not int or not 0 <= version <= max_dave:
        raise ValueError(
            f"dave_protocol_version {_cut(version)} is not a version from 0 to {max_dave}"
        )
    return bytes(key), version


_HANDLERS: dict[int, Callable[[VoiceGateway, Any, float], list[VoiceAction]]] = {
    2: VoiceGateway._on_ready,
    4: VoiceGateway._on_session_description,
    5: VoiceGateway._on_speaking,
    6: VoiceGateway._on_heartbeat_ack,
    8: VoiceGateway._on_hello,
    9: VoiceGateway._on_resumed,
}
