"""The library a bot application uses: typed events from the bus, commands with replies.

    client = Client(events="ipc:///run/user/1000/shardline/events.sock",
                    commands="ipc:///run/user/1000/shardline/commands.sock")

    @client.on(MessageCreate)
    async def react(event: MessageCreate) -> None:
        ...

    reply = await client.send(UpdatePresence("idle"), guild_id=1234)
    await client.run()

Handlers are chosen by class (a handler for ``ErrorEvent`` catches every error); events are
decoded only for types someone handles; optional deduplication by (source, session, seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
import zmq
import zmq.asyncio

from ipc.codec import SUBSCRIBE, CodecError, decode_bus
from ipc.handlers import HandlerTable
from ipc.messages import Command, Event

__all__ = ["Client", "CommandError", "request_sync", "secure"]

E = TypeVar("E", bound=Event)


class CommandError(RuntimeError):
    """The supervisor refused a command; the message says why."""


class Client:
    def __init__(
        self,
        events: str,
        commands: str,
        *,
        dedupe: bool = False,
        server_key: str | None = None,
        client_key: str | None = None,
        partition: tuple[int, int] = (0, 1),
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.ctx = context or zmq.asyncio.Context.instance()
        self.events_endpoint = events
        self.commands_endpoint = commands
        self.handlers = HandlerTable()
        self.dedupe = dedupe
        self._seen: dict[tuple[str, str | None], int] = {}
        self.gaps = 0  # dispatches missing in a session's seq (lost at a high-water mark)
        self.received = 0
        self._sub: zmq.asyncio.Socket | None = None
        self._subscription: list[bytes] = []
        self._dealer: zmq.asyncio.Socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._count_gaps = True
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.server_key = server_key  # the supervisor's CURVE public key, for tcp:// endpoints
        self.client_key = client_key  # our CURVE secret key (else $SHARDLINE_CLIENT_KEY)
        # (index, count): this process handles guild events with (guild_id >> 22) % count
        # == index, and DMs when index is 0; shardline's own events go to every process.
        self.partition = partition

    # -- handlers -------------------------------------------------------------------------

    def on(self, cls: type[E]) -> Callable[[Callable[[E], Any]], Callable[[E], Any]]:
        """``@client.on(MessageCreate)``: call the function for every such event."""
        return self.handlers.on(cls)

    async def events(self, *classes: type[Event]) -> AsyncIterator[Event]:
        """Iterate over the events of the given classes (all, if none is given)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        wanted = classes or (Event,)
        for cls in wanted:
            self.handlers.add(cls, queue.put_nowait)
        while True:
            yield await queue.get()

    # -- running --------------------------------------------------------------------------

    def connect(self, prefixes: list[bytes] | None = None) -> None:
        """Connect to the supervisor and subscribe to the event types whose names start with
        one of ``prefixes`` (all, by default)."""
        # A gap in seq means loss only when every type is subscribed to.
        self._count_gaps = prefixes is None or b"" in prefixes
        sub = self.ctx.socket(zmq.DEALER)
        # Little waits here: the supervisor keeps each subscriber's backlog, bounded in bytes
        # (bus.subscriber_buffer_bytes), and counts what it drops.
        sub.setsockopt(zmq.RCVHWM, 1000)
        sub.setsockopt(zmq.LINGER, 0)
        secure(sub, self.server_key, self.client_key)
        sub.connect(self.events_endpoint)
        self._subscription = [SUBSCRIBE, self.name.encode()[:128], *(prefixes or [b""])]
        zmq.Socket.shadow(sub.underlying).send_multipart(self._subscription, zmq.NOBLOCK)
        self._sub = sub
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        secure(dealer, self.server_key, self.client_key)
        dealer.connect(self.commands_endpoint)
        self._dealer = dealer

    async def run(self) -> None:
        """Receive and dispatch events until cancelled."""
        if self._sub is None:
            self.connect()
        assert self._sub is not None
        sub = self._sub
        # The same socket, synchronous: after one awaited message, take whatever else is
        # already queued without a future per message (the asyncio wrapper's main cost).
        sync: zmq.Socket[Any] = zmq.Socket.shadow(sub.underlying)
        noblock = int(zmq.NOBLOCK)
        reporter = asyncio.get_running_loop().create_task(self._report_loop())
        try:
            await self._receive(sub, sync, noblock)
        finally:
            reporter.cancel()

    async def _receive(self, sub: zmq.asyncio.Socket, sync: zmq.Socket[Any], noblock: int) -> None:
        while True:
            frames = await sub.recv_multipart()
            await self._dispatch(list(frames))
            for _ in range(1000):
                try:
                    frames = sync.recv_multipart(noblock)
                except zmq.Again:
                    break
                await self._dispatch(frames)

    async def _dispatch(self, frames: list[bytes]) -> None:
        self.received += 1
        try:
            envelope, event = decode_bus(frames)
        except CodecError:
            return
        if envelope.seq is not None and envelope.kind == "dispatch":
            key = (envelope.source, envelope.session)
            last = self._seen.get(key)
            if last is not None:
                if envelope.seq <= last:
                    if self.dedupe:
                        return
                elif envelope.seq > last + 1 and self._count_gaps:
                    self.gaps += envelope.seq - last - 1
            if last is None or envelope.seq > last:
                self._seen[key] = envelope.seq
        index, count = self.partition
        if count > 1 and envelope.kind == "dispatch":
            raw = event.raw
            guild = raw.get("guild_id") if isinstance(raw, dict) else None
            shard_of = 0
            if isinstance(guild, str) and guild.isdigit():
                shard_of = (int(guild) >> 22) % count
            if shard_of != index:
                return
        for handler in self.handlers.handlers_for(event):
            result = handler(event)
            if result is not None and hasattr(result, "__await__"):
                await result

    async def _report_loop(self, every: float = 2.0) -> None:
        """Tell the supervisor what this subscriber received and missed, so that losses at a
        high-water mark show in ``shardline status``."""
        while True:
            await asyncio.sleep(every)
            if self._sub is not None:  # renew: it also re-subscribes after a supervisor restart
                with contextlib.suppress(zmq.ZMQError):
                    await self._sub.send_multipart(self._subscription, zmq.NOBLOCK)
            with contextlib.suppress(CommandError):
                await self.request(
                    "shardline.client_stats",
                    {"name": self.name, "received": self.received, "gaps": self.gaps},
                    timeout=every,
                )

    # -- commands -------------------------------------------------------------------------

    async def send(
        self,
        command: Command,
        *,
        guild_id: int | None = None,
        shard: int | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Send a command through the supervisor; returns its reply (raises CommandError)."""
        options: dict[str, Any] = {}
        if guild_id is not None:
            options["guild_id"] = str(guild_id)
        if shard is not None:
            options["shard"] = shard
        reply = await self.request(command.type_name, command.raw, options, timeout=timeout)
        if not reply.get("ok"):
            raise CommandError(str(reply.get("error")))
        return reply

    async def join_voice(self, guild_id: int, channel_id: int) -> dict[str, Any]:
        """Join (or move to) a voice channel: the supervisor starts the guild's voice process."""
        return await self._voice("join", guild_id, channel_id=str(channel_id))

    async def leave_voice(self, guild_id: int) -> dict[str, Any]:
        return await self._voice("leave", guild_id)

    async def play(self, guild_id: int, path: str, *, queue: bool = False) -> dict[str, Any]:
        """Play an audio file (anything ffmpeg reads; ``.pcm`` is raw s16le 48 kHz stereo);
        with ``queue``, after what is playing."""
        return await self._voice("play", guild_id, path=os.path.abspath(path), queue=queue)

    async def stop_playing(self, guild_id: int) -> dict[str, Any]:
        return await self._voice("stop", guild_id)

    async def pause(self, guild_id: int) -> dict[str, Any]:
        return await self._voice("pause", guild_id)

    async def resume(self, guild_id: int) -> dict[str, Any]:
        return await self._voice("resume", guild_id)

    async def set_volume(self, guild_id: int, volume: float) -> dict[str, Any]:
        """Scale the guild's playback (1.0 = as is, up to 2.0)."""
        return await self._voice("volume", guild_id, volume=str(volume))

    async def record(self, guild_id: int, *, stop: bool = False) -> dict[str, Any]:
        """Record every member of the guild's call to one WAV file each; the reply names
        the directory. ``stop=True`` ends the recording (and closes the files)."""
        return await self._voice("record", guild_id, stop=stop)

    async def _voice(self, action: str, guild_id: int, **fields: Any) -> dict[str, Any]:
        reply = await self.request(
            f"shardline.voice.{action}", {"guild_id": str(guild_id), **fields}
        )
        if not reply.get("ok"):
            raise CommandError(str(reply.get("error")))
        return reply

    async def request(
        self,
        type_name: str,
        body: Any,
        options: dict[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        if self._closed.is_set():
            raise CommandError("the client is closed")
        if self._dealer is None:
            self.connect([])
        assert self._dealer is not None
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_replies())
        request_id = str(next(self._ids)).encode()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._dealer.send_multipart(
                [request_id, type_name.encode(), orjson.dumps(body), orjson.dumps(options or {})]
            )
        except zmq.ZMQError as exc:
            self._pending.pop(request_id, None)
            raise CommandError(f"cannot send to the supervisor: {exc}") from None
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise CommandError(
                f"no reply from the supervisor at {self.commands_endpoint} within {timeout}s"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    async def _read_replies(self) -> None:
        assert self._dealer is not None
        while True:
            request_id, body = await self._dealer.recv_multipart()
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                future.set_result(orjson.loads(body))

    async def wait_closed(self) -> None:
        """Return when :meth:`close` is called (an app's ``main`` can end with this)."""
        await self._closed.wait()

    def close(self) -> None:
        self._closed.set()
        if self._reader is not None:
            self._reader.cancel()
        for sock in (self._sub, self._dealer):
            if sock is not None:
                sock.close(linger=0)


def secure(sock: zmq.Socket[Any], server_key: str | None, client_key: str | None = None) -> None:
    """Make ``sock`` a CURVE client of a server whose public key is ``server_key``, as the
    client whose secret key is ``client_key`` (else ``$SHARDLINE_CLIENT_KEY``). The server
    admits only client public keys on its allow-list (``ipc.client_public_keys``)."""
    if server_key:
        secret_text = client_key or os.environ.get("SHARDLINE_CLIENT_KEY", "")
        if secret_text:
            secret = secret_text.encode()
            public = zmq.curve_public(secret)
        else:  # no key of our own: the handshake is refused unless the server allows any
            public, secret = zmq.curve_keypair()
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


def request_sync(
    endpoint: str,
    type_name: str,
    body: Any = None,
    timeout: float = 5.0,
    server_key: str | None = None,
    client_key: str | None = None,
) -> dict[str, Any]:
    """One request/reply from a plain (non-async) program, e.g. the CLI."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    path = endpoint.removeprefix("ipc://")
    if endpoint.startswith("ipc://") and not os.path.exists(path):
        sock.close()
        raise CommandError(f"no supervisor is running here (no socket at {path})")
    secure(sock, server_key, client_key)
    sock.connect(endpoint)
    no_answer = CommandError(f"the supervisor at {endpoint} did not answer within {timeout}s")
    deadline = time.monotonic() + timeout
    try:
        # A DEALER with no peer (nobody listening, or a refused CURVE handshake) blocks in
        # send: wait for it to be writable within the timeout instead of forever.
        if not sock.poll(int(timeout * 1000), zmq.POLLOUT):
            raise no_answer
        try:
            sock.send_multipart(
                [b"1", type_name.encode(), orjson.dumps(body or {}), b"{}"], flags=zmq.NOBLOCK
            )
        except zmq.Again:
            raise no_answer from None
        if not sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            raise no_answer
        _, reply = sock.recv_multipart()
        return dict(orjson.loads(reply))
    finally:
        with contextlib.suppress(zmq.ZMQError):
            sock.close()
