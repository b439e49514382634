"""The gateway protocol for one shard, without I/O.

:class:`GatewayProtocol` takes websocket messages, elapsed time, identify permits and commands,
and returns :data:`Action` objects: what to send, when to close, what to publish. The loop in
``shards/loop.py`` performs them; nothing here touches a socket or a clock, so every rule is
tested by feeding payloads and times (tests/shards/test_protocol.py).
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from conn.actions import Close
from conn.backoff import backoff_delay
from conn.pacemaker import Beat, Pacemaker
from ipc.checkpoint import Checkpoint
from ipc.codec import MAX_GATEWAY_PAYLOAD, encode_gateway_command
from ipc.commands import Heartbeat, Identify, Resume
from ipc.control import MAX_SESSION_ID_LENGTH, gateway_url_problem
from ipc.errors import (
    CommandFailed,
    ConnectionLost,
    DecodeError,
    ErrorEvent,
    FatalClose,
    InvalidSession,
    PayloadTooLarge,
    ProtocolError,
)
from ipc.intents import PRIVILEGED, names_from_bits
from ipc.messages import GatewayCommand
from ipc.states import ShardState
from shards.closecodes import CloseAction, policy_for
from shards.counters import DispatchTypes, ShardCounters
from shards.inflate import DEFAULT_MAX_PAYLOAD, InflateError, Inflator, make_inflator
from shards.ratelimit import SendLimiter

__all__ = [
    "RESUMABLE_CLOSE",
    "Action",
    "Checkpoint",
    "Close",
    "Emit",
    "Forward",
    "GatewayProtocol",
    "Publish",
    "RequestPermit",
    "RequestResume",
    "Send",
    "ShardSettings",
    "ShardState",
]

# The code we close with when the session must survive (1000/1001 would end it).
RESUMABLE_CLOSE = 3000
# HELLO's heartbeat_interval must fall in [min_heartbeat_interval, MAX_HEARTBEAT_INTERVAL]
# (Discord sends 41,250 ms): outside it a server is broken, and obeying it means heartbeating
# in a hot loop or never.
MAX_HEARTBEAT_INTERVAL = 600.0
IDENTIFY_WINDOW = 3600.0  # the hourly identify cap's window
FORWARDED_DISPATCHES = ("VOICE_STATE_UPDATE", "VOICE_SERVER_UPDATE")
# Dispatches whose body the protocol reads; every other dispatch is published unparsed.
READ_DISPATCHES = frozenset(
    ("READY", "RESUMED", "GUILD_CREATE", "GUILD_DELETE", *FORWARDED_DISPATCHES)
)
# Discord writes dispatches as {"t":...,"s":...,"op":0,"d":...}: reading t and s from that
# prefix spares parsing a body only the bus's consumers need. Anything else is parsed whole.
_ID = re.compile(rb'"id":"(\d{1,20})"')
_DISPATCH_PREFIX = re.compile(rb'\{"t":"([A-Z0-9_]{1,64})","s":(\d{1,19}),"op":0,"d":[\[{]')


_S = ShardState
# Legal transitions (h11-style): anything else is a bug in this module, not in the peer.
TRANSITIONS: dict[ShardState, set[ShardState]] = {
    _S.DISCONNECTED: {_S.CONNECTING, _S.BACKING_OFF, _S.STOPPED, _S.FATAL},
    _S.CONNECTING: {_S.IDENTIFYING, _S.RESUMING, _S.BACKING_OFF, _S.FATAL, _S.STOPPED},
    _S.IDENTIFYING: {_S.READY, _S.BACKING_OFF, _S.FATAL, _S.STOPPED, _S.IDENTIFYING},
    _S.RESUMING: {_S.READY, _S.IDENTIFYING, _S.BACKING_OFF, _S.FATAL, _S.STOPPED},
    _S.READY: {_S.IDENTIFYING, _S.BACKING_OFF, _S.FATAL, _S.STOPPED},
    _S.BACKING_OFF: {_S.CONNECTING, _S.BACKING_OFF, _S.FATAL, _S.STOPPED},
    _S.FATAL: {_S.STOPPED},
    _S.STOPPED: set(),
}


# -- actions --------------------------------------------------------------------------------


@dataclass(slots=True)
class Send:
    """Write ``data`` to the websocket. ``command`` is set for commands submitted by the bot."""

    data: bytes
    kind: str  # "heartbeat", "identify", "resume", "command"
    command: GatewayCommand | None = None


@dataclass(slots=True)
class Publish:
    """Put a dispatch on the event bus, body unchanged."""

    t: str
    raw: bytes
    seq: int | None


@dataclass(slots=True)
class Emit:
    """Publish a shardline event (an error, mostly) on the bus."""

    event: ErrorEvent


@dataclass(slots=True)
class RequestPermit:
    """Ask for an identify permit (the supervisor's scheduler, or the local bucket)."""


@dataclass(slots=True)
class RequestResume:
    """Ask whether to RESUME (a multi-host fleet: does this host still hold the shard?)."""


@dataclass(slots=True)
class Forward:
    """Hand a dispatch to the supervisor (voice credentials)."""

    t: str
    raw: bytes


Action = Send | Close | Publish | Emit | Checkpoint | RequestPermit | RequestResume | Forward


@dataclass
class ShardSettings:
    token: str
    shard_id: int
    shard_count: int
    intents: int
    compression: str = "zlib-stream"
    large_threshold: int = 250
    presence: dict[str, Any] | None = None
    properties: dict[str, str] = field(
        default_factory=lambda: {"os": "linux", "browser": "shardline", "device": "shardline"}
    )
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    send_limit: int = 120
    send_window: float = 60.0
    heartbeat_reserve: int = 5
    # A connection must stay READY this long before reconnect backoff starts again from
    # zero: a server that breaks every session right after READY/RESUMED meets growing delays.
    stable_after: float = 60.0
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    # One shard never spends more of the fleet's daily identify budget than this per hour.
    max_identifies_per_hour: int = 10
    # In a multi-host fleet, each RESUME waits for the supervisor's word that this host still
    # holds the shard's lease: a host that lost it must not take the session back.
    ask_before_resume: bool = False
    min_heartbeat_interval: float = 1.0  # seconds; tests against a fast emulator lower it
    hello_timeout: float = 20.0  # an open connection that sends no HELLO is given up on
    ready_timeout: float = 60.0  # an IDENTIFY that gets no READY is given up on

    def __repr__(self) -> str:  # never show the token
        return (
            f"ShardSettings(shard={self.shard_id}/{self.shard_count}, intents={self.intents}, "
            f"compression={self.compression!r})"
        )


class GatewayProtocol:
    """One shard's gateway session across connections. See the module docstring."""

    def __init__(self, settings: ShardSettings, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.rng = rng
        self.source = f"shard:{settings.shard_id}"
        self.state = ShardState.DISCONNECTED
        # the session (survives connections)
        self.session_id: str | None = None
        self.resume_url: str | None = None
        self.seq: int | None = None
        self.user_id: str | None = None
        self.guilds: set[str] = set()
        self.pending_guilds: set[str] = set()  # listed by READY, no GUILD_CREATE yet
        # per connection
        self.inflator: Inflator = make_inflator(settings.compression, settings.max_payload_bytes)
        self.limiter = SendLimiter(
            settings.send_limit, settings.send_window, settings.heartbeat_reserve
        )
        self.pacemaker = Pacemaker(lambda: self.rng())  # self.rng may be replaced (tests)
        self.identify_sent = False
        self.permit_requested = False
        self.resume_asked = False  # a RESUME waits for the supervisor's word
        self.reidentify_at: float | None = None
        # HELLO (or READY after IDENTIFY) must come by then, else the connection is given up
        self.silence_deadline: float | None = None
        self._waiting_for = ""
        self._closing: tuple[int, CloseAction] | None = None  # we asked to close: why
        # across connections
        self.reconnects = 0
        self.attempts = 0  # failures since the last connection that stayed healthy
        self.ready_since: float | None = None  # READY/RESUMED on the current connection
        self.reconnect_at: float | None = None
        self.invalid_sessions = 0  # INVALID_SESSION(false) in a row, since the last READY
        self.identify_times: deque[float] = deque()  # IDENTIFYs sent within the last hour
        self.identify_hold_until: float | None = None  # hourly cap reached: no identify before
        self.seq_regressions = 0
        self.queue: deque[tuple[GatewayCommand, bytes]] = deque()
        self.in_flight: list[GatewayCommand] = []  # sent, not yet confirmed by a heartbeat ACK
        self._confirm_mark: int | None = None
        self.dispatches = 0
        self.fatal: FatalClose | None = None
        self.types = DispatchTypes()  # per type name: decoded once, counted
        self.counters = ShardCounters()
        self.guild_hint = 0

    # -- state ----------------------------------------------------------------------------

    def _set_state(self, new: ShardState) -> None:
        if new is not self.state and new not in TRANSITIONS[self.state]:
            raise AssertionError(f"illegal shard transition {self.state.value} -> {new.value}")
        self.state = new

    @property
    def resumable(self) -> bool:
        return self.session_id is not None and self.seq is not None

    def restore(
        self, session_id: str, seq: int, resume_url: str, guilds: int = 0, user_id: str = ""
    ) -> None:
        """Start from a checkpoint: the first connection RESUMEs instead of identifying.
        ``guilds`` is the guild count before, shown until GUILD_CREATEs say otherwise;
        ``user_id`` is the bot's (READY said it; RESUMED does not)."""
        self.session_id, self.seq, self.resume_url = session_id, seq, resume_url
        self.guild_hint = guilds
        self.user_id = user_id or None

    def checkpoint(self) -> Checkpoint:
        """Where the session stands (call only when :attr:`resumable`)."""
        assert self.session_id is not None and self.seq is not None
        settings = self.settings
        return Checkpoint(
            settings.shard_id,
            settings.shard_count,
            self.session_id,
            self.seq,
            self.resume_url or "",
            guilds=self.guild_count,
            user_id=self.user_id or "",
        )

    @property
    def latency(self) -> float | None:
        """Seconds from the last heartbeat to its ACK."""
        return self.pacemaker.latency

    @property
    def guild_count(self) -> int:
        return len(self.guilds) or self.guild_hint

    def connect_url(self, gateway_url: str) -> str:
        """Where the next connection goes: the resume URL when resuming."""
        base = self.resume_url if self.resumable and self.resume_url else gateway_url
        query = "v=10&encoding=json"
        if self.settings.compression not in ("none", ""):
            query += f"&compress={self.settings.compression}"
        return f"{base.rstrip('/')}/?{query}"

    # -- connection lifecycle -------------------------------------------------------------

    def on_connecting(self, now: float) -> None:
        self._set_state(ShardState.CONNECTING)
        self.reconnect_at = None

    def on_connected(self, now: float) -> None:
        """A fresh websocket is open: reset everything that belongs to one connection."""
        self.inflator = make_inflator(self.settings.compression, self.settings.max_payload_bytes)
        self.limiter.reset()
        self.pacemaker.stop()
        self.identify_sent = False
        self.permit_requested = False
        self.resume_asked = False
        self.reidentify_at = None
        self._closing = None
        self.silence_deadline = now + self.settings.hello_timeout
        self._waiting_for = "HELLO"

    def on_connect_failed(self, now: float, error: str) -> list[Action]:
        """The websocket could not be opened: back off and try again."""
        self.attempts += 1
        self._backoff(now, planned=False)
        return [Emit(ConnectionLost(message=f"cannot connect: {error}", source=self.source))]

    def on_closed(self, code: int | None, reason: str, now: float, handshake: bool) -> list[Action]:
        """The websocket closed (``code`` None: no close frame). Decide what comes next.
        ``handshake`` is True when the close handshake completed."""
        actions: list[Action] = []
        ours = self._closing
        self._closing = None
        if ours is None:
            self.counters.closed(code)
        if ours is not None and handshake:
            self.in_flight.clear()  # the peer read everything up to our close frame
        elif self.in_flight:
            for command in self.in_flight:
                actions.append(
                    Emit(
                        CommandFailed(
                            message=(
                                f"{command.type_name} was sent but the connection closed before "
                                "the gateway confirmed it; it may or may not have been applied"
                            ),
                            source=self.source,
                            command=command.type_name,
                            detail=command.raw,
                        )
                    )
                )
            self.in_flight.clear()
        self._confirm_mark = None
        self.pacemaker.stop()
        if self.ready_since is not None and now - self.ready_since >= self.settings.stable_after:
            self.attempts = 0  # that connection was healthy: this failure starts afresh
        self.ready_since = None
        if self.state in (ShardState.STOPPED, ShardState.FATAL):
            return actions
        if ours is not None:
            action = ours[1]
            planned = True
        else:
            policy = policy_for(code)
            action = policy.action
            planned = False
            if action is CloseAction.FATAL:
                advice = policy.advice
                if code == 4014:
                    wanted = [n for n in names_from_bits(self.settings.intents) if n in PRIVILEGED]
                    advice = advice.format(privileged=", ".join(wanted) or "the privileged intents")
                self.fatal = FatalClose(
                    message=f"gateway closed {code} ({policy.meaning}): {advice}",
                    source=self.source,
                    code=code or 0,
                    reason=reason,
                    advice=advice,
                )
                self._set_state(ShardState.FATAL)
                return [*actions, Emit(self.fatal)]
            said = f": {_sample(reason)}" if reason else ""
            actions.append(
                Emit(
                    ConnectionLost(
                        message=f"gateway closed {code} ({policy.meaning}{said}); "
                        f"{'resuming' if action is CloseAction.RESUME else 'identifying afresh'}",
                        source=self.source,
                        code=code or 0,
                    )
                )
            )
        if action is CloseAction.IDENTIFY:
            self._forget_session()
        self.attempts += 1
        self.reconnects += 1
        self._backoff(now, planned)
        return actions

    def _backoff(self, now: float, planned: bool) -> None:
        """Wait before the next connection: nothing for the first planned reconnect after a
        healthy period (op 7), then exponentially longer, with jitter, up to backoff_max."""
        if planned and self.attempts <= 1:
            delay = 0.0
        else:
            s = self.settings
            delay = backoff_delay(max(1, self.attempts), s.backoff_base, s.backoff_max, self.rng)
        self.reconnect_at = now + delay
        if self.identify_hold_until is not None and not self.resumable:
            self.reconnect_at = max(self.reconnect_at, self.identify_hold_until)
        self._set_state(ShardState.BACKING_OFF)

    def _forget_session(self) -> None:
        self.session_id = self.resume_url = None
        self.seq = None

    def stop(self) -> list[Action]:
        """Shut down: close resumably (the session survives for the next process)."""
        actions: list[Action] = []
        if self.state not in (ShardState.DISCONNECTED, ShardState.BACKING_OFF, ShardState.FATAL):
            actions.append(
                self._close(RESUMABLE_CLOSE, "shutting down; will resume", CloseAction.RESUME)
            )
        if self.resumable:
            actions.append(self.checkpoint())
        if self.state is not ShardState.STOPPED:
            self._set_state(ShardState.STOPPED)
        return actions

    def _close(self, code: int, reason: str, then: CloseAction) -> Close:
        self._closing = (code, then)
        return Close(code, reason)

    def _close_after(
        self, event: ErrorEvent, reason: str, then: CloseAction = CloseAction.RESUME
    ) -> list[Action]:
        """Say what went wrong, then close resumably; ``then``: what the next connection does."""
        return [Emit(event), self._close(RESUMABLE_CLOSE, reason, then)]

    # -- receiving ------------------------------------------------------------------------

    def receive(self, message: bytes | str, now: float) -> list[Action]:
        """One websocket message from the gateway."""
        if self._closing is not None:
            return []  # closing: nothing more from this connection counts
        try:
            raw = self.inflator.feed(message)
        except InflateError as exc:
            return self._close_after(
                DecodeError(message=f"{exc}; reconnecting to resume", source=self.source),
                "corrupt compressed stream",
            )
        if raw is None:
            return []
        match = _DISPATCH_PREFIX.match(raw)
        if match is not None and raw.endswith(b"}"):
            t_bytes = match.group(1)
            entry = self.types.get(t_bytes) or self.types.add(t_bytes)
            t = entry.name
            if t not in READ_DISPATCHES or (t == "GUILD_CREATE" and self._arrived(raw)):
                seq = int(match.group(2))
                self.dispatches += 1
                entry.count += 1
                if self.seq is not None and seq <= self.seq:
                    return [Publish(t, raw, seq), *self._seq_went_back(t, seq)]
                self.seq = seq
                return [Publish(t, raw, seq)]
        try:
            payload = orjson.loads(raw)
            op = payload["op"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return [
                Emit(
                    DecodeError(
                        message="gateway sent a payload that is not JSON with an 'op'; ignored",
                        source=self.source,
                        sample=raw[:200].decode("utf-8", "replace"),
                    )
                )
            ]
        if op == 0:
            return self._on_dispatch(payload, raw, now)
        handler = _OP_HANDLERS.get(op) if isinstance(op, int) else None
        if handler is None:
            return [
                Emit(
                    ProtocolError(
                        message=f"unknown gateway opcode {op!r}; ignored", source=self.source
                    )
                )
            ]
        return handler(self, payload.get("d"), now)

    def _seq_went_back(self, t: str, seq: int) -> list[Action]:
        """A dispatch whose seq is not past the last one: published (nothing is lost, and
        consumers deduplicate by seq), but the session's position never moves back."""
        self.seq_regressions += 1
        if self.seq_regressions & (self.seq_regressions - 1):
            return []  # said on the 1st, 2nd, 4th, 8th... time: a hostile server cannot flood
        return [
            Emit(
                ProtocolError(
                    message=f"gateway sequence went backwards: {t} has seq {seq} after "
                    f"{self.seq} (seen {self.seq_regressions} times); the session keeps "
                    f"{self.seq}",
                    source=self.source,
                )
            )
        ]

    def _on_hello(self, d: Any, now: float) -> list[Action]:
        value = d.get("heartbeat_interval") if isinstance(d, dict) else None
        interval = math.nan  # anything but a finite int or float (bool included) is refused
        if isinstance(value, int | float) and type(value) is not bool and math.isfinite(value):
            interval = value / 1000
        lowest = self.settings.min_heartbeat_interval
        if not lowest <= interval <= MAX_HEARTBEAT_INTERVAL:
            self.attempts += 1  # a broken server: the reconnect after this close backs off
            return self._close_after(
                ProtocolError(
                    message=f"HELLO's heartbeat_interval {_sample(value)} is not a number of "
                    f"milliseconds from {lowest * 1000:.0f} to "
                    f"{MAX_HEARTBEAT_INTERVAL * 1000:.0f}; reconnecting after a backoff",
                    source=self.source,
                ),
                "bad HELLO",
            )
        self.silence_deadline = None
        self.limiter.reserve_for_heartbeats(interval)
        self.pacemaker.start(interval, now)
        if self.resumable:
            self._set_state(ShardState.RESUMING)
            if self.settings.ask_before_resume:
                self.resume_asked = True
                return [RequestResume()]
            return self._resume(now)
        self._set_state(ShardState.IDENTIFYING)
        return self._request_permit(now)

    def _resume(self, now: float) -> list[Action]:
        assert self.session_id is not None and self.seq is not None
        resume = Resume(token=self.settings.token, session_id=self.session_id, seq=self.seq)
        self.limiter.try_acquire(now)
        self.counters.resumes += 1
        return [Send(encode_gateway_command(resume), "resume")]

    def on_resume_permit(self, now: float) -> list[Action]:
        """The supervisor says this host still holds the shard: RESUME, if still waiting."""
        if not self.resume_asked or self.state is not ShardState.RESUMING:
            return []
        self.resume_asked = False
        if self.pacemaker.interval is None or not self.resumable:
            return []
        return self._resume(now)

    def _request_permit(self, now: float) -> list[Action]:
        if self.permit_requested or self.identify_sent:
            return []
        while self.identify_times and now - self.identify_times[0] >= IDENTIFY_WINDOW:
            self.identify_times.popleft()
        cap = self.settings.max_identifies_per_hour
        if len(self.identify_times) >= cap:
            # Hold this connection's identify until the oldest one leaves the hour; close
            # so that no idle connection waits on the gateway meanwhile.
            self.identify_hold_until = self.identify_times[0] + IDENTIFY_WINDOW
            wait = self.identify_hold_until - now
            return self._close_after(
                ProtocolError(
                    message=f"this shard identified {len(self.identify_times)} times in the "
                    f"last hour, its cap (shards.max_identifies_per_hour = {cap}): the "
                    f"next IDENTIFY waits {wait:.0f}s so the daily budget is not burnt",
                    source=self.source,
                ),
                "identify cap reached",
                CloseAction.IDENTIFY,
            )
        self.identify_hold_until = None
        self.permit_requested = True
        return [RequestPermit()]

    def on_permit(self, now: float) -> list[Action]:
        """The identify permit arrived: IDENTIFY now if the connection is waiting for it."""
        self.permit_requested = False
        if (
            self.state is not ShardState.IDENTIFYING
            or self.identify_sent
            or self.pacemaker.interval is None
        ):
            return []
        s = self.settings
        fields: dict[str, Any] = {
            "token": s.token,
            "properties": s.properties,
            "intents": s.intents,
            "shard": [s.shard_id, s.shard_count],
            "large_threshold": s.large_threshold,
        }
        if s.presence is not None:
            fields["presence"] = s.presence
        self.identify_sent = True
        self.identify_times.append(now)
        self.counters.identifies += 1
        self.silence_deadline = now + s.ready_timeout
        self._waiting_for = "READY"
        self.limiter.try_acquire(now)
        return [Send(encode_gateway_command(Identify(**fields)), "identify")]

    def _on_heartbeat_request(self, d: Any, now: float) -> list[Action]:
        return self._heartbeat(now)

    def _on_heartbeat_ack(self, d: Any, now: float) -> list[Action]:
        self.pacemaker.acked(now)
        self.counters.heartbeat_acks += 1
        if self._confirm_mark is not None:
            del self.in_flight[: self._confirm_mark]
            self._confirm_mark = None
        return []

    def _on_reconnect(self, d: Any, now: float) -> list[Action]:
        if self.pacemaker.interval is None:
            self.attempts += 1  # RECONNECT before HELLO: the node is going away, back off
        return [self._close(RESUMABLE_CLOSE, "gateway asked to reconnect", CloseAction.RESUME)]

    def _on_invalid_session(self, d: Any, now: float) -> list[Action]:
        self.counters.invalid_sessions += 1
        if d is True and self.resumable:
            return self._close_after(
                InvalidSession(
                    message="gateway sent INVALID_SESSION (op 9, resumable); resuming",
                    source=self.source,
                    resumable=True,
                ),
                "session invalid, resumable",
            )
        # Not resumable: wait a random 1-5 s (Discord's advice), doubled for each invalid
        # session in a row, then identify afresh on this connection.
        self.invalid_sessions += 1
        exponent = min(self.invalid_sessions - 1, 16)
        delay = min(self.settings.backoff_max * 5, (1 + 4 * self.rng()) * 2**exponent)
        self._forget_session()
        self.identify_sent = False
        self.permit_requested = False
        self.reidentify_at = now + delay
        self._set_state(ShardState.IDENTIFYING)
        return [
            Emit(
                InvalidSession(
                    message=f"gateway sent INVALID_SESSION (op 9, not resumable), "
                    f"{self.invalid_sessions} in a row; identifying afresh in {delay:.1f}s",
                    source=self.source,
                    resumable=False,
                    in_a_row=self.invalid_sessions,
                )
            )
        ]

    def _on_dispatch(self, payload: dict[str, Any], raw: bytes, now: float) -> list[Action]:
        t = payload.get("t")
        s = payload.get("s")
        if not isinstance(t, str):
            return [
                Emit(
                    ProtocolError(
                        message=f"dispatch without an event type (s={s!r}); ignored",
                        source=self.source,
                    )
                )
            ]
        self.dispatches += 1
        self.types.count_name(t)
        actions: list[Action] = [Publish(t, raw, s if type(s) is int else None)]
        if type(s) is int:
            if self.seq is not None and s <= self.seq and t != "READY":
                actions.extend(self._seq_went_back(t, s))
            else:
                self.seq = s
        if t == "READY" or t == "RESUMED":
            actions.extend(self._on_session_ready(t, payload.get("d"), now))
        elif t == "GUILD_CREATE":
            self._track_guild(payload.get("d"), add=True)
        elif t == "GUILD_DELETE":
            d = payload.get("d")
            if isinstance(d, dict) and not d.get("unavailable"):
                self._track_guild(d, add=False)
        elif t in FORWARDED_DISPATCHES:
            d = payload.get("d")
            if t == "VOICE_SERVER_UPDATE" or (
                isinstance(d, dict) and d.get("user_id") == self.user_id
            ):
                actions.append(Forward(t, raw))
        return actions

    def _arrived(self, raw: bytes) -> bool:
        """Whether a GUILD_CREATE is for a guild READY listed, found without parsing it (a
        large guild's payload is hundreds of KB); that guild is no longer pending.
        Snowflakes are unique, so the first ``"id":"..."`` in it that READY listed is the
        guild's own (or its @everyone role's, which has the guild's id). A guild joined
        later is parsed whole."""
        guilds = self.guilds
        if not guilds:
            return False
        for match in _ID.finditer(raw):
            guild = match.group(1).decode()
            if guild in guilds:
                self.pending_guilds.discard(guild)
                return True
        return False

    def _track_guild(self, d: Any, add: bool) -> None:
        if isinstance(d, dict) and "id" in d:
            (self.guilds.add if add else self.guilds.discard)(str(d["id"]))
            self.pending_guilds.discard(str(d["id"]))

    def _on_session_ready(self, t: str, d: Any, now: float) -> list[Action]:
        expected = ShardState.IDENTIFYING if t == "READY" else ShardState.RESUMING
        if self.state is not expected or (t == "READY" and not self.identify_sent):
            return [  # a server's mistake, never a state change: published, said, ignored
                Emit(
                    ProtocolError(
                        message=f"{t} while {self.state.value}: out of turn, ignored",
                        source=self.source,
                    )
                )
            ]
        actions: list[Action] = []
        if t == "READY":
            session_id = d.get("session_id") if isinstance(d, dict) else None
            if not (isinstance(session_id, str) and 0 < len(session_id) <= MAX_SESSION_ID_LENGTH):
                # No session to resume or checkpoint: this connection is useless. Identify
                # afresh after a growing backoff (and within the hourly cap).
                self.attempts += 1
                return self._close_after(
                    ProtocolError(
                        message=f"READY without a usable session_id "
                        f"({_sample(session_id)}); reconnecting to identify afresh",
                        source=self.source,
                    ),
                    "READY without session_id",
                    CloseAction.IDENTIFY,
                )
            assert isinstance(d, dict)
            self.session_id = session_id
            url = d.get("resume_gateway_url")
            problem = gateway_url_problem(url)
            self.resume_url = url if problem is None else None
            if problem is not None and url is not None:
                actions.append(
                    Emit(
                        ProtocolError(
                            message=f"READY's resume_gateway_url {_sample(url)} {problem}; "
                            "resuming through the gateway URL instead",
                            source=self.source,
                        )
                    )
                )
            user = d.get("user")
            user_id = user.get("id") if isinstance(user, dict) else None
            self.user_id = str(user_id) if type(user_id) in (str, int) else None
            listed = d.get("guilds")
            self.guilds = (
                {str(g["id"]) for g in listed if isinstance(g, dict) and "id" in g}
                if isinstance(listed, list)
                else set()
            )
            self.pending_guilds = set(self.guilds)  # until each one's GUILD_CREATE
        self._set_state(ShardState.READY)
        self.silence_deadline = None
        self.ready_since = now
        self.invalid_sessions = 0
        if self.resumable:
            actions.append(self.checkpoint())
        return actions

    # -- time -----------------------------------------------------------------------------

    def poll(self, now: float) -> list[Action]:
        """Everything that is due at ``now``: heartbeats, zombie detection, queued commands."""
        actions: list[Action] = []
        if self.silence_deadline is not None and now >= self.silence_deadline:
            return self._gave_up_waiting()
        beat = self.pacemaker.due(now) if self._closing is None else None
        if beat is not None:
            if beat is Beat.ZOMBIE:
                actions.append(
                    Emit(
                        ConnectionLost(
                            message="no HEARTBEAT_ACK since the last heartbeat: zombied "
                            "connection, reconnecting to resume",
                            source=self.source,
                        )
                    )
                )
                actions.append(
                    self._close(RESUMABLE_CLOSE, "zombied connection", CloseAction.RESUME)
                )
                return actions
            actions.extend(self._heartbeat(now))
        if self.reidentify_at is not None and now >= self.reidentify_at:
            self.reidentify_at = None
            actions.extend(self._request_permit(now))
        if self.queue and self.state is ShardState.READY and self._closing is None:
            actions.extend(self._drain(now))
        return actions

    def _gave_up_waiting(self) -> list[Action]:
        """HELLO, or READY after IDENTIFY, never came: a stalled server. Reconnect after a
        growing backoff."""
        waited = self._waiting_for
        limit = self.settings.hello_timeout if waited == "HELLO" else self.settings.ready_timeout
        self.silence_deadline = None
        self.attempts += 1
        return self._close_after(
            ConnectionLost(
                message=f"no {waited} from the gateway within {limit:.0f}s: a stalled "
                "server; reconnecting after a backoff",
                source=self.source,
            ),
            f"no {waited}",
        )

    def _heartbeat(self, now: float) -> list[Action]:
        if self.pacemaker.interval is None:
            return []
        self.limiter.try_acquire(now, heartbeat=True)
        self.pacemaker.sent(now)
        self._confirm_mark = len(self.in_flight)
        return [Send(encode_gateway_command(Heartbeat(self.seq)), "heartbeat")]

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`poll` has something to do (None: nothing scheduled)."""
        if self._closing is not None:
            return None  # waiting for the close to complete; nothing else is due
        times = [
            t
            for t in (self.pacemaker.deadline, self.reidentify_at, self.silence_deadline)
            if t is not None
        ]
        if self.queue and self.state is ShardState.READY and self._closing is None:
            times.append(self.limiter.earliest_free())
        return min(times) if times else None

    # -- commands -------------------------------------------------------------------------

    def submit(self, command: GatewayCommand, now: float) -> list[Action]:
        """Queue a command; it is sent in order, on a live session, within the rate limit."""
        data = encode_gateway_command(command)
        if len(data) > MAX_GATEWAY_PAYLOAD:
            return [
                Emit(
                    PayloadTooLarge(
                        message=f"{command.type_name} is {len(data)} bytes, over the gateway's "
                        f"{MAX_GATEWAY_PAYLOAD}-byte limit; not sent",
                        source=self.source,
                        size=len(data),
                        command=command.type_name,
                    )
                )
            ]
        self.queue.append((command, data))
        if self.state is ShardState.READY and self._closing is None:
            return self._drain(now)
        return []

    def _drain(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while self.queue and self.limiter.try_acquire(now):
            command, data = self.queue.popleft()
            actions.append(Send(data, "command", command))
        return actions

    def on_sent(self, action: Send) -> None:
        """The loop wrote ``action`` to the socket."""
        if action.command is not None:
            self.in_flight.append(action.command)

    def on_send_failed(self, action: Send) -> None:
        """The socket refused ``action``: a command goes back to the front of the queue."""
        if action.command is not None:
            self.queue.appendleft((action.command, action.data))

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "shard": self.settings.shard_id,
            "state": self.state.value,
            "latency_ms": None if self.latency is None else round(self.latency * 1000, 3),
            "seq": self.seq,
            "session": self.session_id,
            "guilds": self.guild_count,
            "guilds_pending": len(self.pending_guilds),
            "reconnects": self.reconnects,
            "queued_commands": len(self.queue),
            "dispatches": self.dispatches,
            "identifies_last_hour": len(self.identify_times),
            "identifies": self.counters.identifies,
            "resumes": self.counters.resumes,
            "invalid_sessions": self.counters.invalid_sessions,
            "heartbeat_acks": self.counters.heartbeat_acks,
            "closes": dict(self.counters.closes),
            "dispatch_types": self.types.by_label(),
        }


def _sample(value: Any, limit: int = 80) -> str:
    """A peer's value for a log line: its repr, cut short (it may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


_OP_HANDLERS: dict[int, Callable[[GatewayProtocol, Any, float], list[Action]]] = {
    1: GatewayProtocol._on_heartbeat_request,
    7: GatewayProtocol._on_reconnect,
    9: GatewayProtocol._on_invalid_session,
    10: GatewayProtocol._on_hello,
    11: GatewayProtocol._on_heartbeat_ack,
}
