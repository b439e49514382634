"""The voice gateway (v8) for one guild's session, without I/O.

Like the shard's protocol: messages and time in, actions out. The loop owns the websocket,
the UDP socket and the clocks; this object decides. DAVE's binary opcodes are handed out
as :class:`DaveMessage` actions for the DAVE driver.

Source: discord.com/developers/docs/topics/voice-connections (v8: ``seq_ack``, binary frames
``[seq u16][opcode u8][payload]`` from the server and ``[opcode u8][payload]`` to it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from voiceworker.crypto import choose_mode

__all__ = [
    "RESUMABLE_CLOSE",
    "VOICE_CLOSE_CODES",
    "Close",
    "Connected",
    "DaveMessage",
    "Discover",
    "Failed",
    "Send",
    "SendBinary",
    "Speaking",
    "VoiceAction",
    "VoiceCredentials",
    "VoiceGateway",
    "VoiceState",
]

RESUMABLE_CLOSE = 4000  # a close the server lets us resume after


class VoiceState(Enum):
    CONNECTING = "connecting"
    IDENTIFYING = "identifying"
    DISCOVERING = "discovering"  # READY received: UDP IP discovery under way
    SELECTING = "selecting"  # SELECT PROTOCOL sent, waiting for the session description
    CONNECTED = "connected"
    RESUMING = "resuming"
    BACKING_OFF = "backing off"
    REJOIN = "rejoin"  # the session is gone: the supervisor must send op 4 again
    WAITING_SERVER = "waiting for server"  # 4014: a new VOICE_SERVER_UPDATE may come
    DISCONNECTED = "disconnected"


class CloseOutcome(Enum):
    RESUME = "resume"
    REJOIN = "rejoin"
    WAIT_SERVER = "wait for a new server"
    STOP = "stop"
    REIDENTIFY = "identify again"  # UDP went silent: a new connection, discovery and key


# Close codes (topics/opcodes-and-status-codes#voice) and what they call for.
VOICE_CLOSE_CODES: dict[int, tuple[CloseOutcome, str]] = {
    4001: (CloseOutcome.STOP, "unknown opcode sent (a bug in this client)"),
    4002: (CloseOutcome.STOP, "the server could not decode a payload (a bug in this client)"),
    4003: (CloseOutcome.REJOIN, "not authenticated"),
    4004: (CloseOutcome.REJOIN, "authentication failed (wrong token)"),
    4005: (CloseOutcome.STOP, "already authenticated (a bug in this client)"),
    4006: (CloseOutcome.REJOIN, "session no longer valid"),
    4009: (CloseOutcome.RESUME, "session timed out"),  # once; a second time: rejoin
    4011: (CloseOutcome.REJOIN, "server not found"),
    4012: (CloseOutcome.STOP, "unknown protocol"),
    4014: (CloseOutcome.WAIT_SERVER, "disconnected (kicked, channel deleted, or moved)"),
    4015: (CloseOutcome.RESUME, "voice server crashed"),
    4016: (CloseOutcome.STOP, "unknown encryption mode"),
    4017: (CloseOutcome.STOP, "E2EE (DAVE) required but not offered"),
    4020: (CloseOutcome.STOP, "bad request"),
    4021: (CloseOutcome.STOP, "disconnected: rate limited"),
    4022: (CloseOutcome.STOP, "disconnected: call terminated"),
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
class Send:
    data: bytes


@dataclass(slots=True)
class SendBinary:
    data: bytes  # [opcode u8][payload]


@dataclass(slots=True)
class Close:
    code: int
    reason: str


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
    outcome: str
    message: str


VoiceAction = Send | SendBinary | Close | Discover | Connected | DaveMessage | Speaking | Failed


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
        self.state = VoiceState.DISCONNECTED
        self.session = _Session()
        self.seq_ack = -1  # last seq seen from the server
        self.heartbeat_interval: float | None = None
        self.next_heartbeat: float | None = None
        self.awaiting_ack = False
        self.heartbeat_sent_at = 0.0
        self.latency: float | None = None
        self.resumable = False  # True once connected: a drop resumes
        self._closing: CloseOutcome | None = None

    # -- connection lifecycle -------------------------------------------------------------

    def on_connected(self, now: float) -> list[VoiceAction]:
        """The websocket is open: RESUME a live session, else IDENTIFY."""
        self.heartbeat_interval = self.next_heartbeat = None
        self.awaiting_ack = False
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
        self.heartbeat_interval = self.next_heartbeat = None
        if self._closing is CloseOutcome.REIDENTIFY:  # UDP went silent: start afresh
            self._closing = None
            self.resumable = False
            self.seq_ack = -1
            self.state = VoiceState.BACKING_OFF
            return [Failed(code, "reidentify", "UDP went silent: identifying again")]
        outcome: CloseOutcome
        if self._closing is not None:  # we closed it on purpose (zombie): resume
            outcome, meaning = self._closing, "closed by us"
        elif code is None or code < 4000:
            outcome, meaning = CloseOutcome.RESUME, "connection lost"
        else:
            outcome, meaning = VOICE_CLOSE_CODES.get(code, (CloseOutcome.RESUME, "unknown code"))
        if code == 4009:
            self.session.timeouts += 1
            if self.session.timeouts > 1:
                outcome = CloseOutcome.REJOIN  # resumed once already: start over
        if outcome is CloseOutcome.RESUME and not self.resumable:
            outcome = CloseOutcome.REJOIN  # nothing to resume yet
        self.state = {
            CloseOutcome.RESUME: VoiceState.BACKING_OFF,
            CloseOutcome.REJOIN: VoiceState.REJOIN,
            CloseOutcome.WAIT_SERVER: VoiceState.WAITING_SERVER,
            CloseOutcome.STOP: VoiceState.DISCONNECTED,
        }[outcome]
        if outcome is not CloseOutcome.RESUME:
            self.resumable = False
        return [Failed(code, outcome.value, f"voice gateway closed {code} ({meaning})")]

    def udp_lost(self) -> list[VoiceAction]:
        """UDP keepalives stopped coming back: close, then identify afresh (a new UDP
        socket, IP discovery and key), the same credentials still being valid."""
        self._closing = CloseOutcome.REIDENTIFY
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
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return []  # malformed: ignored (the loop logs it)
        seq = payload.get("seq")
        if type(seq) is int:
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
        try:
            self.heartbeat_interval = float(d["heartbeat_interval"]) / 1000
        except (KeyError, TypeError, ValueError):
            return []
        self.next_heartbeat = now + self.heartbeat_interval * self.rng()
        return []

    def _on_ready(self, d: Any, now: float) -> list[VoiceAction]:
        try:
            s = self.session
            s.ssrc, s.server_ip, s.server_port = int(d["ssrc"]), str(d["ip"]), int(d["port"])
            s.modes = [str(m) for m in d.get("modes", [])]
            s.mode = choose_mode(s.modes)
        except (KeyError, TypeError, ValueError) as exc:
            self.state = VoiceState.DISCONNECTED
            return [
                Failed(None, CloseOutcome.STOP.value, f"unusable READY: {exc}"),
                Close(1000, "unusable READY"),
            ]
        self.state = VoiceState.DISCOVERING
        return [Discover(s.server_ip, s.server_port, s.ssrc)]

    def on_discovered(self, address: str, port: int) -> list[VoiceAction]:
        """IP discovery answered: SELECT PROTOCOL with our external address."""
        self.state = VoiceState.SELECTING
        data = {"address": address, "port": port, "mode": self.session.mode}
        return [self._json(1, {"protocol": "udp", "data": data})]

    def _on_session_description(self, d: Any, now: float) -> list[VoiceAction]:
        try:
            s = self.session
            s.mode = str(d["mode"])
            s.secret_key = bytes(d["secret_key"])
            s.dave_version = int(d.get("dave_protocol_version", 0))
        except (KeyError, TypeError, ValueError) as exc:
            return [Failed(None, CloseOutcome.STOP.value, f"unusable session description: {exc}")]
        self.state = VoiceState.CONNECTED
        self.resumable = True
        self.session.timeouts = 0
        return [Connected(s.mode, s.secret_key, s.dave_version, s.ssrc)]

    def _on_resumed(self, d: Any, now: float) -> list[VoiceAction]:
        self.state = VoiceState.CONNECTED
        return []

    def _on_speaking(self, d: Any, now: float) -> list[VoiceAction]:
        try:
            return [Speaking(int(d["user_id"]), int(d["ssrc"]))]
        except (KeyError, TypeError, ValueError):
            return []

    def _on_heartbeat_ack(self, d: Any, now: float) -> list[VoiceAction]:
        self.awaiting_ack = False
        self.latency = now - self.heartbeat_sent_at
        return []

    def speaking(self, flags: int = 1) -> VoiceAction:
        """op 5: must go out (with flags) before the first audio packet."""
        return self._json(5, {"speaking": flags, "delay": 0, "ssrc": self.session.ssrc})

    # -- time -----------------------------------------------------------------------------

    def poll(self, now: float) -> list[VoiceAction]:
        if self.next_heartbeat is None or now < self.next_heartbeat or self._closing is not None:
            return []
        if self.awaiting_ack:
            self._closing = CloseOutcome.RESUME
            return [Close(RESUMABLE_CLOSE, "no heartbeat ACK: reconnecting to resume")]
        assert self.heartbeat_interval is not None
        self.awaiting_ack = True
        self.heartbeat_sent_at = now
        self.next_heartbeat = now + self.heartbeat_interval
        return [self._json(3, {"t": int(now * 1000), "seq_ack": self.seq_ack})]

    def next_deadline(self) -> float | None:
        return None if self._closing is not None else self.next_heartbeat

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _json(op: int, d: Any) -> Send:
        return Send(orjson.dumps({"op": op, "d": d}))

    @staticmethod
    def binary(op: int, payload: bytes) -> SendBinary:
        """A client -> server binary message (DAVE ops 26 and 28)."""
        return SendBinary(bytes((op,)) + payload)


_HANDLERS: dict[int, Callable[[VoiceGateway, Any, float], list[VoiceAction]]] = {
    2: VoiceGateway._on_ready,
    4: VoiceGateway._on_session_description,
    5: VoiceGateway._on_speaking,
    6: VoiceGateway._on_heartbeat_ack,
    8: VoiceGateway._on_hello,
    9: VoiceGateway._on_resumed,
}
