"""The emulator: a local Discord (REST + gateway) on loopback, with a control API.

Use it in-process (``async with Emulator(EmulatorConfig(...)) as emu``) or as a program
(``shardline emulator``), where the same control API is served as JSON over HTTP under
``/_emulator/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from websockets.asyncio.server import Server, serve

from emulator.gateway import (
    GatewayRules,
    GatewayServer,
    Received,
    Session,
    StampedConnection,
    _frame,
)
from emulator.http import HttpRequest, HttpResponse, HttpServer, json_response
from emulator.voice import VoiceServer
from emulator.world import DEFAULT_TOKEN, World, WorldConfig

__all__ = ["Emulator", "EmulatorConfig"]


@dataclass
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0  # REST and control API; 0 picks a free port
    gateway_port: int = 0
    token: str = DEFAULT_TOKEN
    guilds: int = 10
    shards: int = 0  # recommended shard count in /gateway/bot; 0 = one per 1000 guilds
    max_concurrency: int = 1
    identify_interval: float = 5.0
    heartbeat_interval_ms: int = 41_250
    seed: int = 0
    large_share: float = 0.05
    large_members: int = 5000
    voice: bool = True  # serve the voice gateway (wss) and UDP
    require_dave: bool = False  # close 4017 when a voice client offers no DAVE
    dave: bool = True  # run calls at DAVE protocol version 1 for clients that offer it
    rules: GatewayRules | None = None  # overrides the fields above when given
    world: WorldConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def gateway_rules(self) -> GatewayRules:
        if self.rules is not None:
            return self.rules
        return GatewayRules(
            token=self.token,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            identify_interval=self.identify_interval,
            max_concurrency=self.max_concurrency,
        )

    def world_config(self) -> WorldConfig:
        if self.world is not None:
            return self.world
        return WorldConfig(
            guilds=self.guilds,
            seed=self.seed,
            large_share=self.large_share,
            large_members=self.large_members,
        )


class Emulator:
    """A running emulator. Every control method is safe to call while clients are connected."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.world = World(self.config.world_config())
        recommended = self.config.shards or max(1, math.ceil(len(self.world.guild_ids) / 1000))
        self.gateway = GatewayServer(
            self.config.gateway_rules(), self.world, recommended_shards=recommended
        )
        self.rules = self.gateway.rules
        self.recommend_shards(recommended)  # a large bot's multiple, from the start
        self._http = HttpServer(self._route)
        self._ws_server: Server | None = None
        self._streams: set[asyncio.Task[int]] = set()
        self.rest_port = 0
        self.gateway_port = 0
        self.voice: VoiceServer | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> Self:
        host = self.config.host
        self._ws_server = await serve(
            self.gateway.handle,
            host,
            self.config.gateway_port,
            compression=None,
            max_size=2**20,
            ping_interval=None,
            create_connection=StampedConnection,
        )
        self.gateway_port = int(next(iter(self._ws_server.sockets)).getsockname()[1])
        self.rest_port = await self._http.start(host, self.config.port)
        self.gateway.url = f"ws://{host}:{self.gateway_port}"
        if self.config.voice:
            self.voice = VoiceServer(
                host, require_dave=self.config.require_dave, dave=self.config.dave
            )
            await self.voice.start()
            self.gateway.voice_endpoint = self.voice.endpoint
            self.gateway.on_voice_token = self.voice.expect
        return self

    async def close(self) -> None:
        for task in list(self._streams):
            task.cancel()
        await asyncio.gather(*self._streams, return_exceptions=True)
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        if self.voice is not None:
            await self.voice.close()
        await self._http.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def rest_url(self) -> str:
        return f"http://{self.config.host}:{self.rest_port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.gateway.url

    def ready_line(self) -> str:
        return f"emulator ready rest={self.rest_url} gateway={self.gateway_url}"

    # -- control API ----------------------------------------------------------------------

    async def inject(
        self, t: str, d: Any, *, shard: int | None = None, guild_id: int | None = None
    ) -> list[int]:
        """Dispatch ``t`` with body ``d`` to the live sessions of ``shard``, or to the shard
        that owns ``guild_id`` (``guild_id=None`` and ``shard=None``: a DM, shard 0).
        Returns the seqs given. Detached sessions keep it for replay on resume."""
        if shard is not None:
            sessions = self.gateway.live_sessions(shard)
        else:
            sessions = self.gateway.sessions_for_guild(guild_id)
        return [await self.gateway.dispatch(s, t, d) for s in sessions]

    def recommend_shards(self, count: int) -> int:
        """``GET /gateway/bot`` recommends ``count`` shards from now on (rounded up to the
        shard multiple a large bot must use); returns what it recommends."""
        multiple = self.rules.shard_multiple
        self.gateway.recommended_shards = max(1, -(-count // multiple) * multiple)
        return self.gateway.recommended_shards

    async def join_guilds(self, count: int) -> list[int]:
        """The bot joins ``count`` new guilds: each one's GUILD_CREATE goes to every session
        that holds it; then a shard holding more than ``max_guilds_per_shard`` is closed with
        4011, as Discord does. Returns the new guild ids."""
        added = self.world.join_guilds(count)
        for gid in added:
            data = self.world.guild_create(gid, large_threshold=250, presences=False)
            await self.inject("GUILD_CREATE", data, guild_id=gid)
        await self.gateway.enforce_guild_limit()
        return added

    async def message(
        self, guild_id: int | None = None, content: str | None = None, *, size: int | None = None
    ) -> list[int]:
        """Inject a MESSAGE_CREATE in ``guild_id`` (None: a DM), shaped like Discord's
        (emulator/feed.py; ``size``: plain text padded to that many bytes instead)."""
        data = self.world.message(guild_id, content, size=size)
        return await self.inject("MESSAGE_CREATE", data, guild_id=guild_id)

    def stream(
        self,
        shard: int,
        *,
        rate: float,
        count: int,
        t: str = "MESSAGE_CREATE",
        size: int | None = None,
    ) -> asyncio.Task[int]:
        """Send ``count`` dispatches to ``shard`` at ``rate`` per second (absolute schedule,
        so rate holds on average). The task's result is how many were sent."""
        task = asyncio.create_task(self._stream(shard, rate, count, t, size))
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)
        return task

    async def _stream(self, shard: int, rate: float, count: int, t: str, size: int | None) -> int:
        sessions = self.gateway.live_sessions(shard)
        if not sessions:
            raise LookupError(f"no live session for shard {shard}")
        session = sessions[-1]
        guilds: list[int | None] = [*self.gateway.guilds_on(session.shard_id, session.shard_count)]
        guilds = guilds or [None]
        # Everything alive now (the world, the replay buffers) stays: keep the collector off
        # it, or its full passes stall the stream and a steady rate arrives in bursts.
        gc.freeze()
        sent = 0
        # Bodies are rendered before the clock starts (a pool, cycled), so the rate holds.
        pool = [
            orjson.dumps(
                self.world.message(guilds[i % len(guilds)], size=size)
                if t == "MESSAGE_CREATE"
                else {}
            )
            for i in range(min(count, 256))
        ]
        start = time.monotonic()
        while sent < count:
            due = min(count, int((time.monotonic() - start) * rate) + 1)
            if due > sent:  # all that is due goes out in one write, as TCP would carry it
                bodies = [pool[i % len(pool)] for i in range(sent, due)]
                await self.gateway.dispatch_encoded_many(session, t, bodies)
                sent = due
            if sent < count:
                await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
        return sent

    async def blast(
        self, shard: int, payloads: list[bytes], t: str | list[str] = "MESSAGE_CREATE"
    ) -> float:
        """Send every body in ``payloads`` as a ``t`` dispatch (or each as its own type, ``t``
        a list as long as ``payloads``) to the shard's live connection
        as fast as the socket takes them, for benchmarks. Frames are compressed and framed
        before the clock starts, so the emulator is not what limits the rate. Returns the
        seconds the sending took. The dispatches are kept for replay like any other."""
        sessions = [s for s in self.gateway.live_sessions(shard) if s.connection is not None]
        if not sessions:
            raise LookupError(f"no connected session for shard {shard}")
        session = sessions[-1]
        conn = session.connection
        assert conn is not None
        async with session.lock, conn.lock:
            frames = []
            types = [t] * len(payloads) if isinstance(t, str) else t
            for body, kind in zip(payloads, types, strict=True):
                frames.append(conn.frame(session.record_encoded(kind, body)))
            transport = conn.ws.transport
            start = time.perf_counter()
            batch: list[bytes] = []
            size = 0
            for frame in frames:
                batch.append(frame)
                size += len(frame)
                if size >= 256 * 1024:
                    transport.write(b"".join(batch))
                    batch, size = [], 0
                    while transport.get_write_buffer_size() > 4 * 1024 * 1024:
                        await asyncio.sleep(0.0005)
            if batch:
                transport.write(b"".join(batch))
            while transport.get_write_buffer_size() > 0:
                await asyncio.sleep(0.0005)
            return time.perf_counter() - start

    async def move_voice(self, guild_id: int) -> str:
        """A region move: a new VOICE_SERVER_UPDATE (new token, the voice server under its
        other name, 127.0.0.1 <-> localhost) to the guild's shard. Returns the new endpoint."""
        if self.voice is None:
            raise LookupError("the emulator runs without voice")
        host = "localhost" if self.gateway.voice_endpoint.startswith("127.") else "127.0.0.1"
        endpoint = f"{host}:{self.voice.port}"
        self.gateway.voice_endpoint = endpoint
        token = secrets.token_hex(8)
        for session in self.gateway.sessions_for_guild(guild_id):
            voice_session, channel = next(
                (
                    (r.session_id, str(r.channel_id))
                    for r in self.voice.sessions.values()
                    if r.guild_id == str(guild_id)
                ),
                ("", str(self.world.voice_channel_id(guild_id))),
            )
            self.voice.expect(token, str(guild_id), str(self.world.bot_id), voice_session, channel)
            body = {"token": token, "guild_id": str(guild_id), "endpoint": endpoint}
            await self.gateway.dispatch(session, "VOICE_SERVER_UPDATE", body)
        return endpoint

    def zombie(self, shard: int, enabled: bool = True) -> int:
        """Stop (or resume) ACKing heartbeats on the shard's current connections."""
        conns = self.gateway.connections_for(shard)
        for conn in conns:
            conn.zombie = enabled
        return len(conns)

    async def send_raw(self, shard: int, payload: bytes) -> int:
        """Send a payload as is (through the connection's compression) to the shard."""
        conns = self.gateway.connections_for(shard)
        for conn in conns:
            await conn.send(payload)
        return len(conns)

    async def send_frame(self, shard: int, data: bytes) -> int:
        """Send bytes as one binary websocket message, bypassing compression (to corrupt
        a compressed stream on purpose)."""
        conns = self.gateway.connections_for(shard)
        for conn in conns:
            async with conn.lock:
                await conn.ws.send(data)
        return len(conns)

    async def reconnect(self, shard: int) -> int:
        """Send op 7 RECONNECT."""
        return await self.send_raw(shard, _frame(7))

    async def request_heartbeat(self, shard: int) -> int:
        """Send op 1: the client must heartbeat at once."""
        return await self.send_raw(shard, _frame(1))

    async def invalid_session(self, shard: int, resumable: bool) -> int:
        """Send op 9; when not resumable, the session ends."""
        conns = self.gateway.connections_for(shard)
        for conn in conns:
            if not resumable and conn.session is not None:
                conn.session.invalid = True
                conn.session.connection = None
                conn.session = None  # the connection may IDENTIFY afresh
            await conn.send(_frame(9, resumable))
        return len(conns)

    async def close_shard(self, shard: int, code: int, reason: str | None = None) -> int:
        """Close the shard's connections with ``code``."""
        conns = self.gateway.connections_for(shard)
        for conn in conns:
            await conn.close(code, reason)
        return len(conns)

    def drop(self, shard: int) -> int:
        """Cut the shard's TCP connections without a close frame."""
        conns = self.gateway.connections_for(shard)
        for conn in conns:
            conn.closed = True
            transport = conn.ws.transport
            transport.abort()
        return len(conns)

    def received(self, shard: int | None = None, op: int | None = None) -> list[Received]:
        """Payloads clients sent, oldest first."""
        return [
            r
            for r in self.gateway.received
            if (shard is None or r.shard_id == shard) and (op is None or r.op == op)
        ]

    def sessions(self, shard: int | None = None) -> list[Session]:
        return [s for s in self.gateway.sessions.values() if shard is None or s.shard_id == shard]

    async def wait_until(self, predicate: Any, timeout: float = 10.0) -> None:
        await self.gateway.wait_until(predicate, timeout)

    def state(self) -> dict[str, Any]:
        """A JSON-ready summary: sessions, connections, identify budget and log."""
        rules = self.rules
        return {
            "rest": self.rest_url,
            "gateway": self.gateway_url,
            "guilds": len(self.world.guild_ids),
            "guild_ids": [str(g) for g in self.world.guild_ids],
            "voice_ca": "" if self.voice is None else self.voice.ca_file,  # trust it for wss
            "voice_channels": {
                str(g): str(self.world.voice_channel_id(g)) for g in self.world.guild_ids
            },
            "session_start_limit": {
                "total": rules.session_start_total,
                "remaining": rules.session_start_remaining,
                "reset_after": rules.session_start_reset_after_ms,
                "max_concurrency": rules.max_concurrency,
            },
            "sessions": [
                {
                    "id": s.id,
                    "shard": [s.shard_id, s.shard_count],
                    "seq": s.seq,
                    "connected": s.connection is not None,
                    "invalid": s.invalid,
                }
                for s in self.gateway.sessions.values()
            ],
            "connections": [
                {
                    "number": c.number,
                    "shard": c.identified_shard,
                    "path": c.path,
                    "zombie": c.zombie,
                }
                for c in self.gateway.connections
            ],
            "identifies": [
                {
                    "shard": [r.shard_id, r.shard_count],
                    "bucket": r.bucket,
                    "at": r.at,
                    "outcome": r.outcome,
                }
                for r in self.gateway.identifies
            ],
        }

    # -- HTTP: REST routes and the JSON control API --------------------------------------

    async def _route(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        if path.startswith("/_emulator/"):
            return await self._control(request, path.removeprefix("/_emulator/"))
        if path.startswith("/api/"):
            return self._rest(request, path)
        return json_response(404, {"message": "404: Not Found", "code": 0})

    def _authorized(self, request: HttpRequest) -> bool:
        return request.headers.get("authorization") == f"Bot {self.rules.token}"

    def _rest(self, request: HttpRequest, path: str) -> HttpResponse:
        # /api/v10/gateway/bot -> ["gateway", "bot"]; the version segment is optional.
        parts = [p for p in path.split("/")[2:] if p]
        if parts and parts[0].startswith("v") and parts[0][1:].isdigit():
            parts = parts[1:]
        route = "/".join(parts)
        if request.method != "GET":
            return json_response(405, {"message": "405: Method Not Allowed", "code": 0})
        if route == "gateway":
            return json_response(200, {"url": self.gateway_url})
        if not self._authorized(request):
            return json_response(401, {"message": "401: Unauthorized", "code": 0})
        if route == "gateway/bot":
            rules = self.rules
            return json_response(
                200,
                {
                    "url": self.gateway_url,
                    "shards": self.gateway.recommended_shards,
                    "session_start_limit": {
                        "total": rules.session_start_total,
                        "remaining": rules.session_start_remaining,
                        "reset_after": rules.session_start_reset_after_ms,
                        "max_concurrency": rules.max_concurrency,
                    },
                },
            )
        if route == "users/@me":
            return json_response(200, self.world.bot_user())
        if route in ("oauth2/applications/@me", "applications/@me"):
            return json_response(200, self._application())
        return json_response(404, {"message": "404: Not Found", "code": 0})

    def _application(self) -> dict[str, Any]:
        bot = self.world.bot_user()
        return {
            "id": str(self.world.application_id),
            "name": bot["username"],
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "flags": 0,
            "owner": {**self.world.user(self.world.bot_id + 1)},
            "team": None,
            "bot": bot,
            "hook": True,
            "integration_types_config": {"0": {}},
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "rpc_origins": [],
        }

    async def _control(self, request: HttpRequest, action: str) -> HttpResponse:
        if request.method == "GET" and action == "state":
            return json_response(200, self.state())
        if request.method == "GET" and action == "received":
            shard = request.query.get("shard", [None])[0]
            rows = self.received(None if shard is None else int(shard))
            return json_response(
                200,
                [
                    {"connection": r.connection, "shard": r.shard_id, "op": r.op, "d": r.d}
                    for r in rows
                ],
            )
        if request.method != "POST":
            return json_response(405, {"message": f"use POST for /_emulator/{action}"})
        try:
            body = request.json()
        except ValueError as exc:
            return json_response(400, {"message": f"body is not JSON: {exc}"})
        try:
            result = await self._control_action(action, body)
        except (KeyError, TypeError, ValueError, LookupError) as exc:
            return json_response(400, {"message": f"/_emulator/{action}: {exc!r}"})
        if result is None:
            return json_response(404, {"message": f"unknown control action {action!r}"})
        return json_response(200, result)

    async def _control_blast(self, shard: int, body: dict[str, Any]) -> dict[str, Any]:
        """``{"shard", "count", "kind": "message"|"mixed"|"guild", "feed"?, "size"?}``:
        benchmark feed. Messages are shaped like Discord's (``feed: "discord"``, the
        default), or plain text padded to ``size`` bytes (``feed: "padded"``, the old uniform
        feed); ``mixed``: messages, typing, reactions, presences and edits in Discord's
        proportions (emulator/feed.py MIX)."""
        count = int(body["count"])
        kind = body.get("kind", "message")
        feed = body.get("feed", "discord")
        if feed not in ("discord", "padded"):
            raise ValueError(f"feed must be 'discord' or 'padded', not {feed!r}")
        size = int(body.get("size", 1024)) if feed == "padded" else None
        if kind == "message":
            guilds = self.world.guild_ids
            pool = [
                orjson.dumps(self.world.message(guilds[i % len(guilds)], size=size))
                for i in range(min(count, 2000))
            ]
            types = ["MESSAGE_CREATE"] * len(pool)
        elif kind == "mixed":  # messages, typing, reactions, presences, edits (feed.MIX)
            guilds = self.world.guild_ids
            mixed = [self.world.mixed(guilds[i % len(guilds)]) for i in range(min(count, 2000))]
            types = [t for t, _ in mixed]
            pool = [orjson.dumps(d) for _, d in mixed]
        elif kind == "guild":
            large = sorted(self.world.large_guilds) or self.world.guild_ids
            pool = [
                orjson.dumps(self.world.guild_create(g, large_threshold=250, presences=True))
                for g in large[:20]
            ]
            types = ["GUILD_CREATE"] * len(pool)
        else:
            raise ValueError(f"kind must be 'message', 'mixed' or 'guild', not {kind!r}")
        payloads = [pool[i % len(pool)] for i in range(count)]
        seconds = await self.blast(shard, payloads, [types[i % len(pool)] for i in range(count)])
        return {
            "count": count,
            "seconds": seconds,
            "bytes": sum(len(p) for p in payloads),
            "distinct": len(set(pool)),
            "t": "mixed" if kind == "mixed" else types[0],
        }

    async def _control_action(self, action: str, body: dict[str, Any]) -> dict[str, Any] | None:
        shard_value = body.get("shard")
        shard = 0 if shard_value is None else int(shard_value)
        if action == "inject":
            seqs = await self.inject(
                body["t"],
                body.get("d", {}),
                shard=None if shard_value is None else shard,
                guild_id=_opt_int(body.get("guild_id")),
            )
            return {"seqs": seqs}
        if action == "message":
            seqs = await self.message(_opt_int(body.get("guild_id")), body.get("content"))
            return {"seqs": seqs}
        if action == "stream":
            self.stream(
                shard,
                rate=float(body["rate"]),
                count=int(body["count"]),
                t=body.get("t", "MESSAGE_CREATE"),
            )
            return {"started": True}
        if action == "blast":
            return await self._control_blast(shard, body)
        if action == "zombie":
            return {"connections": self.zombie(shard, bool(body.get("enabled", True)))}
        if action == "reconnect":
            return {"connections": await self.reconnect(shard)}
        if action == "heartbeat":
            return {"connections": await self.request_heartbeat(shard)}
        if action == "invalid_session":
            resumable = bool(body.get("resumable", False))
            return {"connections": await self.invalid_session(shard, resumable)}
        if action == "close":
            code = int(body["code"])
            return {"connections": await self.close_shard(shard, code, body.get("reason"))}
        if action == "drop":
            return {"connections": self.drop(shard)}
        if action == "recommend_shards":
            return {"shards": self.recommend_shards(int(body["count"]))}
        if action == "join_guilds":
            added = await self.join_guilds(int(body["count"]))
            return {"guild_ids": [str(g) for g in added]}
        if action.startswith("voice_"):
            return await self._control_voice(action, body)
        return None

    async def _control_voice(self, action: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """``voice_member {guild_id, user_id, leave?}``: an emulated member joins (or leaves)
        the guild's call; ``voice_packets {guild_id, clear?, count?}``: every RTP packet
        its voice sessions sent, as ``[seq, timestamp, arrival (Unix s, kernel stamp), e2ee]`` (with
        ``count``: ``[how many]`` instead);
        ``voice_close {code}``: close every voice connection with ``code``."""
        if self.voice is None:
            raise LookupError("the emulator runs without voice")
        if action == "voice_close":
            return {"connections": await self.voice.close_session(int(body["code"]))}
        guild = int(body["guild_id"])
        if action == "voice_member":
            channel, user = self.world.voice_channel_id(guild), int(body["user_id"])
            if body.get("leave"):
                await self.voice.remove_member(channel, user)
            else:
                await self.voice.add_member(channel, user)
            return {"channel_id": str(channel)}
        if action == "voice_packets":
            sessions = []
            for record in self.voice.sessions.values():
                if record.guild_id != str(guild):
                    continue
                rows = [[p.seq, p.timestamp, p.arrival, p.e2ee] for p in record.packets]
                if body.get("count"):  # just how many (cheap to poll while audio flows)
                    rows = [len(rows)]  # type: ignore[list-item]
                elif body.get("clear"):
                    record.packets.clear()
                sessions.append({"ssrc": record.ssrc, "mode": record.mode, "packets": rows})
            return {"sessions": sessions}
        return None


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


async def run_forever(config: EmulatorConfig, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set; prints the ready line once listening."""
    async with Emulator(config) as emu:
        gc.freeze()  # the generated world stays: full collections over it would stall I/O
        print(emu.ready_line(), flush=True)
        await stop.wait()
        with contextlib.suppress(Exception):
            for s in list(emu.gateway.connections):
                await s.close(4000, "Emulator shutting down.")
