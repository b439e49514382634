"""The emulated gateway (v10, JSON, zlib-stream / zstd-stream): sessions, the protocol's rules
and their close codes, and the hooks the control API uses to misbehave on purpose.

Written from Discord's documentation (topics/gateway, topics/gateway-events,
topics/opcodes-and-status-codes, topics/rate-limits), independently of shardline's own
client code, so that a misreading on one side is not mirrored on the other.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import DATA_OPCODES, Frame
from websockets.protocol import State

from emulator.world import DEFAULT_TOKEN, World, shard_for

try:
    from compression.zstd import ZstdCompressor  # type: ignore[import-not-found]
except ImportError:  # Python < 3.14
    from backports.zstd import ZstdCompressor

__all__ = ["GatewayRules", "GatewayServer", "IdentifyRecord", "Received", "Session"]

# Intent bits the emulator knows (topics/gateway#list-of-intents) and the privileged ones.
KNOWN_INTENTS = sum(1 << b for b in (*range(0, 17), 20, 21, 24, 25))
PRIVILEGED_INTENTS = {
    1 << 1: "GUILD_MEMBERS",
    1 << 8: "GUILD_PRESENCES",
    1 << 15: "MESSAGE_CONTENT",
}
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
MAX_PAYLOAD = 4096
MEMBERS_PER_CHUNK = 1000

# Close codes and the reason text Discord sends with them.
CLOSE_REASONS = {
    4000: "Unknown error.",
    4001: "Unknown opcode.",
    4002: "Error while decoding payload.",
    4003: "Not authenticated.",
    4004: "Authentication failed.",
    4005: "Already authenticated.",
    4007: "Invalid seq.",
    4008: "Rate limited.",
    4009: "Session timed out.",
    4010: "Invalid shard.",
    4011: "Sharding required.",
    4012: "Invalid API version.",
    4013: "Invalid intent(s).",
    4014: "Disallowed intent(s).",
}
# Codes after which the session cannot be resumed.
SESSION_ENDING_CODES = {4004, 4007, 4009, 4010, 4011, 4012, 4013, 4014}


@dataclass
class GatewayRules:
    """What the emulated gateway enforces; defaults are Discord's."""

    token: str = DEFAULT_TOKEN
    heartbeat_interval_ms: int = 41_250
    identify_interval: float = 5.0  # seconds per identify per concurrency bucket
    max_concurrency: int = 1
    send_limit: int = 120  # payloads a client may send per window...
    send_window: float = 60.0  # ...of this many seconds
    max_guilds_per_shard: int = 2500  # more than this on one shard: close 4011
    shard_multiple: int = 1  # large-bot sharding: a shard count not a multiple of this: 4010
    enabled_privileged_intents: int = sum(PRIVILEGED_INTENTS)  # what the "portal" allows
    session_start_total: int = 1000
    session_start_remaining: int = 1000
    session_start_reset_after_ms: int = 86_400_000
    resume_window: float = 180.0  # seconds a detached session stays resumable
    replay_buffer: int = 100_000  # dispatches kept per session for replay
    member_request_interval: float = 30.0  # full member list requests per guild
    heartbeat_timeout_factor: float = 1.5  # no heartbeat for interval x this: close 4009


@dataclass
class Received:
    """One payload a client sent."""

    connection: int
    shard_id: int | None
    op: int
    d: Any
    at: float


@dataclass
class IdentifyRecord:
    shard_id: int
    shard_count: int
    bucket: int
    at: float
    accepted: bool
    outcome: str  # "ready", "rate_limited", or the close code as text


@dataclass
class Session:
    id: str
    shard_id: int
    shard_count: int
    intents: int
    large_threshold: int
    seq: int = 0
    buffer: deque[tuple[int, bytes]] = field(default_factory=deque)
    sent: list[tuple[int, str]] = field(default_factory=list)  # (seq, t) of every dispatch
    connection: Connection | None = None
    detached_at: float | None = None
    invalid: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def record_encoded(self, t: str, body: bytes) -> bytes:
        """Give a ``t`` dispatch with ``d`` already encoded the next seq, keep it for replay,
        and return its payload (for feeds that send many at once; the caller trims)."""
        self.seq += 1
        payload = b'{"t":"%s","s":%d,"op":0,"d":%s}' % (t.encode(), self.seq, body)
        self.buffer.append((self.seq, payload))
        self.sent.append((self.seq, t))
        return payload


class StampedConnection(ServerConnection):
    """A server connection that notes when each message's frame arrived: Discord judges
    rate limits (identify buckets, the send window) by arrival, and under load this
    process may only get round to a message later."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: deque[float] = deque()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode in DATA_OPCODES and event.fin:
            self.arrivals.append(time.monotonic())
        super().process_event(event)


class Connection:
    """One client websocket and its state."""

    def __init__(self, server: GatewayServer, ws: ServerConnection, number: int) -> None:
        self.server = server
        self.ws = ws
        self.number = number
        self.path = ws.request.path if ws.request else ""
        self.session: Session | None = None
        self.zombie = False
        self.identified_shard: int | None = None
        self.identified_at = 0.0  # when it identified or resumed (monotonic)
        self.closed_at: float | None = None
        self.compressor: Callable[[bytes], bytes] | None = None
        self.payload_compression = False
        self.send_times: deque[float] = deque()
        self.last_heartbeat = time.monotonic()
        self.lock = asyncio.Lock()
        self.closed = False
        self.message_at = 0.0  # arrival of the message being handled

    async def send(self, payload: bytes) -> None:
        """Compress (per the connection's transport compression) and send, in order."""
        async with self.lock:
            await self._send_locked(payload)

    def encode(self, payload: bytes) -> tuple[bytes, bool]:
        """The payload as this connection carries it, and whether that is a binary message:
        through the transport's compressor, zlib per payload (``compress=true``), or text.
        Call it under the lock: a transport compressor's stream state is shared."""
        if self.compressor is not None:
            return self.compressor(payload), True
        if self.payload_compression:
            return zlib.compress(payload), True
        return payload, False

    async def _send_locked(self, payload: bytes) -> None:
        if self.closed:
            return
        data, binary = self.encode(payload)
        await self.ws.send(data, text=not binary)

    async def send_many(self, payloads: list[bytes]) -> None:
        """Send several payloads, in order, in one socket write: under load Discord's frames
        arrive coalesced in TCP segments, and a write per frame would cost the emulator (which
        shares the cores of the fleet it feeds) more than the shard's read of it."""
        async with self.lock:
            if self.closed or self.ws.state is not State.OPEN:
                return  # the session's buffer keeps them: a resume replays them
            frames = [self.frame(p) for p in payloads]
            transport = self.ws.transport
            transport.write(b"".join(frames))
            while transport.get_write_buffer_size() > _WRITE_BUFFER_LIMIT:
                if transport.is_closing():
                    return
                await asyncio.sleep(0.001)  # the client is not reading: wait, as a send would

    def frame(self, payload: bytes) -> bytes:
        """:meth:`encode` as one websocket frame, for writing to the transport directly."""
        data, binary = self.encode(payload)
        return server_frame(data, binary=binary)

    async def close(self, code: int, reason: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if code in SESSION_ENDING_CODES and self.session is not None:
            self.session.invalid = True
        await self.ws.close(code, reason if reason is not None else CLOSE_REASONS.get(code, ""))


_WRITE_BUFFER_LIMIT = 1 << 20


def server_frame(data: bytes, *, binary: bool) -> bytes:
    """One unmasked, unfragmented websocket frame (RFC 6455 section 5.2)."""
    head = 0x82 if binary else 0x81
    n = len(data)
    if n < 126:
        return bytes((head, n)) + data
    if n < 65536:
        return bytes((head, 126)) + n.to_bytes(2, "big") + data
    return bytes((head, 127)) + n.to_bytes(8, "big") + data


def _zlib_stream() -> Callable[[bytes], bytes]:
    compressor = zlib.compressobj()

    def compress(data: bytes) -> bytes:
        return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

    return compress


def _zstd_stream() -> Callable[[bytes], bytes]:
    compressor = ZstdCompressor()
    flush_block = ZstdCompressor.FLUSH_BLOCK

    def compress(data: bytes) -> bytes:
        return bytes(compressor.compress(data, mode=flush_block))

    return compress


COMPRESSORS: dict[str, Callable[[], Callable[[bytes], bytes]]] = {
    "zlib-stream": _zlib_stream,
    "zstd-stream": _zstd_stream,
}


def _frame(op: int, d: Any = None, s: int | None = None, t: str | None = None) -> bytes:
    # Discord's own key order: t, s, op, d.
    return orjson.dumps({"t": t, "s": s, "op": op, "d": d})


class GatewayServer:
    """Holds every session and connection; the websocket handler is :meth:`handle`."""

    def __init__(self, rules: GatewayRules, world: World, *, recommended_shards: int) -> None:
        self.rules = rules
        self.world = world
        self.recommended_shards = recommended_shards
        self.url = ""  # set by the emulator once it listens
        self.voice_endpoint = ""  # host:port of the voice server
        # told of each voice token handed out: (token, guild_id, user_id, session_id)
        # token, guild, user, voice session, channel: what the voice server will accept
        self.on_voice_token: Callable[[str, str, str, str, str], None] | None = None
        self.sessions: dict[str, Session] = {}
        self.connections: list[Connection] = []
        # (shard, identified at, closed at) of every connection that identified or resumed
        self.spans: list[tuple[int, float, float]] = []
        self.received: list[Received] = []
        self.identifies: list[IdentifyRecord] = []
        self._bucket_last: dict[int, float] = {}
        self._member_requests: dict[int, float] = {}
        self._numbers = itertools.count(1)
        self._changed = asyncio.Condition()

    # -- waiting (for tests and the control API) ------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds; raises ``TimeoutError`` naming nothing else."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    # -- the websocket handler ------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        conn = Connection(self, ws, next(self._numbers))
        self.connections.append(conn)
        query = parse_qs(urlsplit(conn.path).query)
        version = query.get("v", ["10"])[0]
        encoding = query.get("encoding", ["json"])[0]
        compress = query.get("compress", [""])[0]
        try:
            if version != "10":
                await conn.close(4012)
                return
            if encoding != "json":
                await conn.close(4002, "The emulator speaks encoding=json only.")
                return
            if compress:
                factory = COMPRESSORS.get(compress)
                if factory is None:
                    await conn.close(4002, f"Unknown compression {compress!r}.")
                    return
                conn.compressor = factory()
            await conn.send(
                _frame(10, {"heartbeat_interval": self.rules.heartbeat_interval_ms, "_trace": []})
            )
            watchdog = asyncio.create_task(self._heartbeat_watchdog(conn))
            try:
                async for message in ws:
                    if not await self._on_message(conn, message):
                        break
            finally:
                watchdog.cancel()
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            conn.closed_at = time.monotonic()
            self.connections.remove(conn)
            if conn.identified_shard is not None:
                self.spans.append((conn.identified_shard, conn.identified_at, conn.closed_at))
                del self.spans[:-100_000]
            session = conn.session
            if session is not None and session.connection is conn:
                session.connection = None
                session.detached_at = time.monotonic()
                rcvd = ws.protocol.close_rcvd
                if (
                    rcvd is not None
                    and rcvd.code in (1000, 1001)
                    and ws.protocol.close_rcvd_then_sent
                ):
                    session.invalid = True  # a normal close ends the session (docs)
            await self._notify()

    async def _heartbeat_watchdog(self, conn: Connection) -> None:
        limit = self.rules.heartbeat_interval_ms / 1000 * self.rules.heartbeat_timeout_factor
        while not conn.closed:
            remaining = conn.last_heartbeat + limit - time.monotonic()
            if remaining <= 0:
                await conn.close(4009)
                return
            await asyncio.sleep(remaining)

    async def _on_message(self, conn: Connection, message: str | bytes) -> bool:
        """Handle one client payload; False once the connection was closed."""
        arrivals = getattr(conn.ws, "arrivals", None)
        now = arrivals.popleft() if arrivals else time.monotonic()
        conn.message_at = now
        data = message.encode() if isinstance(message, str) else message
        if len(data) > MAX_PAYLOAD:
            await conn.close(4002, "Payload too large.")
            return False
        window = conn.send_times
        window.append(now)
        while window and window[0] <= now - self.rules.send_window:
            window.popleft()
        if len(window) > self.rules.send_limit:
            await conn.close(4008)
            return False
        try:
            payload = orjson.loads(data)
            op = payload["op"]
            if not isinstance(op, int):
                raise TypeError("op")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await conn.close(4002)
            return False
        d = payload.get("d")
        shard_id = conn.session.shard_id if conn.session else conn.identified_shard
        if shard_id is None and op == 2 and isinstance(d, dict):
            shard = d.get("shard", [0, 1])
            shard_id = shard[0] if isinstance(shard, list) and shard else None
        self.received.append(Received(conn.number, shard_id, op, d, now))
        await self._notify()
        handler = self._handlers.get(op)
        if handler is None:
            await conn.close(4001)
            return False
        if op not in (1, 2, 6) and conn.session is None:
            await conn.close(4003)
            return False
        return bool(await handler(self, conn, d))

    # -- opcodes --------------------------------------------------------------------------

    async def _on_heartbeat(self, conn: Connection, d: Any) -> bool:
        conn.last_heartbeat = time.monotonic()
        if not conn.zombie:
            await conn.send(_frame(11))
        return True

    async def _authenticate(self, conn: Connection, d: Any) -> bool:
        """The checks IDENTIFY and RESUME share: not twice on a connection (4005), and the
        right token (4004). False once the connection is closed."""
        if conn.session is not None:
            await conn.close(4005)
            return False
        if not isinstance(d, dict) or d.get("token") != self.rules.token:
            await conn.close(4004)
            return False
        return True

    async def _on_identify(self, conn: Connection, d: Any) -> bool:
        if not await self._authenticate(conn, d):
            return False
        shard = d.get("shard", [0, 1])
        if not (
            isinstance(shard, list)
            and len(shard) == 2
            and all(type(x) is int for x in shard)
            and 0 <= shard[0] < shard[1]
        ):
            await conn.close(4010)
            return False
        shard_id, shard_count = shard
        conn.identified_shard = shard_id
        conn.identified_at = time.monotonic()
        if shard_count % self.rules.shard_multiple:
            await self._record_identify(shard_id, shard_count, False, "4010")
            multiple = self.rules.shard_multiple
            await conn.close(4010, f"Shard count must be a multiple of {multiple}.")
            return False
        guilds_needed = -(-len(self.world.guild_ids) // self.rules.max_guilds_per_shard)
        if shard_count < guilds_needed:
            await self._record_identify(shard_id, shard_count, False, "4011")
            await conn.close(4011)
            return False
        intents = d.get("intents")
        if type(intents) is not int or intents < 0 or intents & ~KNOWN_INTENTS:
            await conn.close(4013)
            return False
        disallowed = [
            name
            for bit, name in PRIVILEGED_INTENTS.items()
            if intents & bit and not self.rules.enabled_privileged_intents & bit
        ]
        if disallowed:
            await conn.close(4014, f"Disallowed intent(s): {', '.join(disallowed)}.")
            return False
        bucket = shard_id % self.rules.max_concurrency
        now = conn.message_at  # when the IDENTIFY arrived, however late we handle it
        last = self._bucket_last.get(bucket)
        if last is not None and now - last < self.rules.identify_interval:
            await self._record_identify(shard_id, shard_count, False, "rate_limited", now)
            await conn.send(_frame(9, False))
            return True
        if self.rules.session_start_remaining <= 0:
            # Discord resets the token when the daily identify budget runs out.
            await self._record_identify(shard_id, shard_count, False, "4004")
            await conn.close(4004, "Authentication failed: session start limit exhausted.")
            return False
        self._bucket_last[bucket] = now
        self.rules.session_start_remaining -= 1
        large_threshold = d.get("large_threshold", 50)
        if type(large_threshold) is not int or not 50 <= large_threshold <= 250:
            large_threshold = 50
        conn.payload_compression = bool(d.get("compress")) and conn.compressor is None
        # Another session of the same shard stays valid: Discord allows several at once (how
        # zero-downtime resharding and handoffs are done); a detached one expires by itself.
        session = Session(secrets.token_hex(16), shard_id, shard_count, intents, large_threshold)
        self.sessions[session.id] = session
        await self._attach(conn, session)
        await self._record_identify(shard_id, shard_count, True, "ready", now)
        guilds = self.guilds_on(shard_id, shard_count)
        ready = {
            "v": 10,
            "user_settings": {},
            "user": self.world.bot_user(),
            "session_type": "normal",
            "session_id": session.id,
            "resume_gateway_url": self.url + "/resume",
            "relationships": [],
            "private_channels": [],
            "presences": [],
            "guilds": [{"id": str(g), "unavailable": True} for g in guilds],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["emulated"],
            "auth": {},
            "application": {"id": str(self.world.application_id), "flags": 0},
            "shard": [shard_id, shard_count],
            "_trace": ['["emulator"]'],
        }
        await self.dispatch(session, "READY", ready)
        if intents & INTENT_GUILDS:
            presences = bool(intents & INTENT_GUILD_PRESENCES)
            for gid in guilds:
                data = self.world.guild_create(
                    gid, large_threshold=large_threshold, presences=presences
                )
                await self.dispatch(session, "GUILD_CREATE", data)
                await asyncio.sleep(0)  # one guild at a time: other connections get a turn
        return True

    async def _record_identify(
        self, shard_id: int, shard_count: int, accepted: bool, outcome: str, at: float = 0.0
    ) -> None:
        bucket = shard_id % self.rules.max_concurrency
        self.identifies.append(
            IdentifyRecord(shard_id, shard_count, bucket, at or time.monotonic(), accepted, outcome)
        )
        await self._notify()

    async def _attach(self, conn: Connection, session: Session) -> None:
        previous = session.connection
        session.connection = conn
        session.detached_at = None
        conn.session = session
        if previous is not None and previous is not conn and not previous.closed:
            await previous.close(4000, "Session resumed elsewhere.")

    async def _on_resume(self, conn: Connection, d: Any) -> bool:
        if not await self._authenticate(conn, d):
            return False
        session = self.sessions.get(str(d.get("session_id")))
        seq = d.get("seq")
        if session is None or session.invalid or self._expired(session):
            await conn.send(_frame(9, False))
            return True
        if type(seq) is not int or seq > session.seq or seq < 0:
            conn.session = session  # so the close below ends this session
            await conn.close(4007)
            return False
        oldest = session.buffer[0][0] if session.buffer else session.seq + 1
        if seq + 1 < oldest:  # the replay buffer no longer reaches back that far
            await conn.send(_frame(9, False))
            return True
        conn.identified_shard = session.shard_id
        conn.identified_at = time.monotonic()
        async with session.lock:  # attach and replay before any new dispatch can interleave
            await self._attach(conn, session)
            for entry_seq, payload in session.buffer:
                if entry_seq > seq:
                    await conn.send(payload)
            await self._dispatch_locked(session, "RESUMED", {"_trace": ['["emulator"]']})
        await self._notify()
        return True

    def _expired(self, session: Session) -> bool:
        return (
            session.detached_at is not None
            and time.monotonic() - session.detached_at > self.rules.resume_window
        )

    async def _on_presence(self, conn: Connection, d: Any) -> bool:
        if not isinstance(d, dict) or "status" not in d:
            await conn.close(4002)
            return False
        return True

    async def _on_voice_state(self, conn: Connection, d: Any) -> bool:
        assert conn.session is not None
        try:
            guild_id = int(d["guild_id"])
            channel = d.get("channel_id")
            channel_id = None if channel is None else int(channel)
        except (KeyError, TypeError, ValueError):
            await conn.close(4002)
            return False
        session = conn.session
        if (
            guild_id not in self.world.guild_ids
            or shard_for(guild_id, session.shard_count) != session.shard_id
        ):
            return True  # Discord ignores voice updates for guilds not on this shard
        voice_session = secrets.token_hex(16)
        member = self.world.member(guild_id, self.world.bot_user(), [])
        state = {
            "member": member,
            "user_id": str(self.world.bot_id),
            "suppress": False,
            "session_id": voice_session,
            "self_video": False,
            "self_mute": bool(d.get("self_mute")),
            "self_deaf": bool(d.get("self_deaf")),
            "request_to_speak_timestamp": None,
            "mute": False,
            "guild_id": str(guild_id),
            "deaf": False,
            "channel_id": None if channel_id is None else str(channel_id),
        }
        await self.dispatch(session, "VOICE_STATE_UPDATE", state)
        if channel_id is not None:
            server = {
                "token": secrets.token_hex(8),
                "guild_id": str(guild_id),
                "endpoint": self.voice_endpoint,
            }
            if self.on_voice_token is not None:
                self.on_voice_token(
                    server["token"],
                    str(guild_id),
                    str(self.world.bot_id),
                    voice_session,
                    str(channel_id),
                )
            await self.dispatch(session, "VOICE_SERVER_UPDATE", server)
        return True

    async def _on_request_members(self, conn: Connection, d: Any) -> bool:
        assert conn.session is not None
        session = conn.session
        try:
            guild_id = int(d["guild_id"])
        except (KeyError, TypeError, ValueError):
            await conn.close(4002)
            return False
        if (
            guild_id not in self.world.guild_ids
            or shard_for(guild_id, session.shard_count) != session.shard_id
        ):
            return True
        nonce = d.get("nonce")
        query = d.get("query")
        limit = d.get("limit") or 0
        user_ids = d.get("user_ids")
        members = self.world.members(guild_id)
        not_found: list[str] = []
        if user_ids is not None:
            wanted = [str(u) for u in (user_ids if isinstance(user_ids, list) else [user_ids])]
            by_id = {m["user"]["id"]: m for m in members}
            selected = [by_id[u] for u in wanted if u in by_id]
            not_found = [u for u in wanted if u not in by_id]
        else:
            text = str(query or "").lower()
            if text == "" and limit == 0:
                now = time.monotonic()
                last = self._member_requests.get(guild_id)
                if last is not None and now - last < self.rules.member_request_interval:
                    retry_after = self.rules.member_request_interval - (now - last)
                    limited = {
                        "opcode": 8,
                        "retry_after": round(retry_after, 3),
                        "meta": {"guild_id": str(guild_id), "nonce": nonce},
                    }
                    await self.dispatch(session, "RATE_LIMITED", limited)
                    return True
                self._member_requests[guild_id] = now
                selected = members
            else:
                selected = [m for m in members if m["user"]["username"].lower().startswith(text)]
                selected = selected[: min(limit or 100, 100)]
        chunks = [
            selected[i : i + MEMBERS_PER_CHUNK] for i in range(0, len(selected), MEMBERS_PER_CHUNK)
        ] or [[]]
        for index, chunk in enumerate(chunks):
            body: dict[str, Any] = {
                "guild_id": str(guild_id),
                "members": chunk,
                "chunk_index": index,
                "chunk_count": len(chunks),
            }
            if index == 0 and not_found:
                body["not_found"] = not_found
            if d.get("presences"):
                body["presences"] = [
                    self.world.presence(int(m["user"]["id"]))
                    for m in chunk
                    if self.world.is_online(int(m["user"]["id"]))
                ]
            if nonce is not None:
                body["nonce"] = nonce
            await self.dispatch(session, "GUILD_MEMBERS_CHUNK", body)
        return True

    async def _on_soundboard(self, conn: Connection, d: Any) -> bool:
        assert conn.session is not None
        for gid in d.get("guild_ids", []) if isinstance(d, dict) else []:
            body = {"guild_id": str(gid), "soundboard_sounds": []}
            await self.dispatch(conn.session, "SOUNDBOARD_SOUNDS", body)
        return True

    _handlers: dict[int, Callable[[GatewayServer, Connection, Any], Any]] = {
        1: _on_heartbeat,
        2: _on_identify,
        3: _on_presence,
        4: _on_voice_state,
        6: _on_resume,
        8: _on_request_members,
        31: _on_soundboard,
    }

    # -- dispatching ----------------------------------------------------------------------

    async def dispatch(self, session: Session, t: str, d: Any) -> int:
        """Give the next seq to a dispatch, keep it for replay, send it if a client is
        attached. Returns the seq."""
        async with session.lock:
            return await self._dispatch_locked(session, t, d)

    async def dispatch_encoded(self, session: Session, t: str, body: bytes) -> int:
        """:meth:`dispatch` with ``d`` already JSON-encoded (benchmark feeds)."""
        async with session.lock:
            return await self._dispatch_locked(session, t, None, body)

    async def dispatch_encoded_many(self, session: Session, t: str, bodies: list[bytes]) -> int:
        """Several ``t`` dispatches with ``d`` already encoded, sent in one write (benchmark
        and test streams). Returns the last seq."""
        async with session.lock:
            payloads = [session.record_encoded(t, body) for body in bodies]
            while len(session.buffer) > self.rules.replay_buffer:
                session.buffer.popleft()
            conn = session.connection
            if conn is not None and not conn.closed:
                await conn.send_many(payloads)
            return session.seq

    async def _dispatch_locked(
        self, session: Session, t: str, d: Any, body: bytes | None = None
    ) -> int:
        session.seq += 1
        seq = session.seq
        if body is None:
            payload = _frame(0, d, seq, t)
        else:
            payload = b'{"t":"%s","s":%d,"op":0,"d":%s}' % (t.encode(), seq, body)
        session.buffer.append((seq, payload))
        if len(session.buffer) > self.rules.replay_buffer:
            session.buffer.popleft()
        session.sent.append((seq, t))
        conn = session.connection
        if conn is not None and not conn.closed:
            try:
                await conn.send(payload)
            except ConnectionClosed:
                pass  # kept in the buffer: a resume replays it
        return seq

    def guilds_on(self, shard_id: int, shard_count: int) -> list[int]:
        """The guild ids Discord's formula puts on this shard."""
        return [g for g in self.world.guild_ids if shard_for(g, shard_count) == shard_id]

    def live_sessions(self, shard_id: int | None = None) -> list[Session]:
        """Sessions that still receive dispatches (attached, or detached but resumable)."""
        return [
            s
            for s in self.sessions.values()
            if not s.invalid
            and not self._expired(s)
            and (shard_id is None or s.shard_id == shard_id)
        ]

    async def enforce_guild_limit(self) -> list[Session]:
        """Close with 4011 (sharding required) every connected session whose shard now holds
        more than ``max_guilds_per_shard`` guilds, as Discord does as a bot grows; returns
        them. The session ends (4011 is not resumable)."""
        closed = []
        limit = self.rules.max_guilds_per_shard
        for session in self.live_sessions():
            conn = session.connection
            if conn is None:
                continue
            if len(self.guilds_on(session.shard_id, session.shard_count)) > limit:
                session.invalid = True
                await conn.close(4011)
                closed.append(session)
        return closed

    def sessions_for_guild(self, guild_id: int | None) -> list[Session]:
        """Where a guild's dispatches go; DMs (``None``) go to shard 0."""
        out = []
        for s in self.live_sessions():
            target = 0 if guild_id is None else shard_for(guild_id, s.shard_count)
            if s.shard_id == target:
                out.append(s)
        return out

    def longest_overlap(self, shard_id: int) -> float:
        """The longest stretch (seconds) during which two or more connections that
        identified or resumed as ``shard_id`` were open at once (a handoff's overlap)."""
        now = time.monotonic()
        spans = [(start, end) for shard, start, end in self.spans if shard == shard_id]
        spans += [
            (c.identified_at, now) for c in self.connections if c.identified_shard == shard_id
        ]
        edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
        open_now, since, longest = 0, 0.0, 0.0
        for at, step in edges:
            if open_now >= 2 and open_now + step < 2:
                longest = max(longest, at - since)
            if open_now < 2 <= open_now + step:
                since = at
            open_now += step
        return longest

    def connections_for(self, shard_id: int | None) -> list[Connection]:
        return [
            c
            for c in self.connections
            if not c.closed
            and (
                shard_id is None
                or c.identified_shard == shard_id
                or (c.session is not None and c.session.shard_id == shard_id)
            )
        ]
