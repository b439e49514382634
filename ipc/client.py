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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
import zmq
import zmq.asyncio

from ipc.codec import (
    BATCH,
    DUPLICATE,
    SUBSCRIBE_BATCHED,
    CodecError,
    Envelope,
    bus_messages,
    decode_bus,
)
from ipc.errors import EventsDropped
from ipc.fields import InvalidFieldError
from ipc.handlers import HandlerTable
from ipc.messages import Command, ErrorCode, ErrorReply, Event, Reply
from ipc.requests import (
    CommandResult,
    JoinVoice,
    LeaveVoice,
    PauseAudio,
    PlayAudio,
    RawRequest,
    Record,
    Recording,
    ReportClientStats,
    ResumeAudio,
    ServeCommands,
    SetVolume,
    StopAudio,
    decode_call,
    encode_request,
    request_frames,
)

__all__ = ["Client", "CommandError", "request_sync", "secure"]

E = TypeVar("E", bound=Event)
C = TypeVar("C", bound=Command)
R = TypeVar("R", bound=Reply)
ServeHandler = Callable[[Any], Awaitable[Reply] | Reply]


class CommandError(RuntimeError):
    """The supervisor (or the application serving the command) refused it: the message says
    why, ``reply`` is the typed :class:`~ipc.messages.ErrorReply` (``reply.code``)."""

    def __init__(self, message: str, reply: ErrorReply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


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
        self.bus_dropped = 0  # what the bus said it dropped for us (EventsDropped)
        self.received = 0
        self._sub: zmq.asyncio.Socket | None = None
        self._subscription: list[bytes] = []
        self._dealer: zmq.asyncio.Socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._served: dict[str, tuple[type[Command], ServeHandler]] = {}
        self._calls: set[asyncio.Task[None]] = set()
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

    def serve(self, cls: type[C]) -> Callable[[Callable[[C], Any]], Callable[[C], Any]]:
        """``@client.serve(MyCommand)``: answer every ``MyCommand`` any process sends (the
        function returns an instance of ``MyCommand.reply_class``, or raises
        :class:`CommandError`). The supervisor hands such commands to this process."""

        def register(function: Callable[[C], Any]) -> Callable[[C], Any]:
            self._served[cls.type_name] = (cls, function)
            return function

        return register

    # -- running --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Subscribed to the bus (by :meth:`connect`, or by a first command)."""
        return self._sub is not None

    def connect(self, prefixes: list[bytes] | None = None) -> None:
        """Connect to the supervisor and subscribe to the event types whose names start with
        one of ``prefixes`` (all, by default)."""
        # A gap in seq means loss only when every type is subscribed to.
        self._count_gaps = prefixes is None or b"" in prefixes
        sub = self.ctx.socket(zmq.DEALER)
        # Little waits here: the supervisor keeps each subscriber's backlog, bounded in bytes
        # (bus.subscriber_buffer_bytes), and counts what it drops.
        sub.setsockopt(zmq.RCVHWM, 50)
        sub.setsockopt(zmq.LINGER, 0)
        secure(sub, self.server_key, self.client_key)
        sub.connect(self.events_endpoint)
        # Batched: a burst arrives as a few messages of many events (docs/wire.md).
        self._subscription = [SUBSCRIBE_BATCHED, self.name.encode()[:128], *(prefixes or [b""])]
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
            await self._take(await sub.recv_multipart())
            for _ in range(100):  # then the next await lets the loop's other tasks run
                try:
                    frames = sync.recv_multipart(noblock)
                except zmq.Again:
                    break
                await self._take(frames)

    async def _take(self, frames: list[bytes]) -> None:
        """One message from the bus: a batch, or one event."""
        if frames[0] != BATCH:
            await self._dispatch(frames)
            return
        try:
            messages = bus_messages(frames)
        except CodecError:
            self.received += 1  # counted, like any message that does not decode
            return
        dispatch = self._dispatch
        for message in messages:
            await dispatch(message)

    async def _dispatch(self, frames: list[bytes]) -> None:
        self.received += 1
        if frames[0] == DUPLICATE:  # already delivered: only the session's seq moves on
            self._advance(frames)
            return
        try:
            envelope, event = decode_bus(frames)
        except CodecError:
            return
        if envelope.seq is not None and envelope.kind == "dispatch":
            if self._track(envelope) and self.dedupe:
                return
        elif envelope.kind == "event" and isinstance(event, EventsDropped):
            self.bus_dropped += event.dropped
            if not self._count_gaps:  # filtered: seq cannot show it, so this is the count
                self.gaps += event.dropped
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

    def _advance(self, frames: list[bytes]) -> None:
        try:
            envelope = Envelope.decode(frames[1])
        except (CodecError, IndexError):
            return
        self._track(envelope)

    def _track(self, envelope: Envelope) -> bool:
        """Follow the session's seq (counting what is missing); True when this one was
        seen already."""
        seq = envelope.seq
        if type(seq) is not int:
            return False
        key = (envelope.source, envelope.session)
        last = self._seen.get(key)
        if last is not None:
            if seq <= last:
                return True
            if seq > last + 1 and self._count_gaps:
                self.gaps += seq - last - 1
        self._seen[key] = seq
        return False

    async def _report_loop(self, every: float = 2.0) -> None:
        """Tell the supervisor what this subscriber received and missed, so that losses at a
        high-water mark show in ``shardline status``."""
        await self._renew_served(every)
        while not self._closed.is_set():  # a closed client stops, even if a cancel was lost
            await asyncio.sleep(every)
            if self._sub is not None:  # renew: it also re-subscribes after a supervisor restart
                with contextlib.suppress(zmq.ZMQError):
                    await self._sub.send_multipart(self._subscription, zmq.NOBLOCK)
            with contextlib.suppress(CommandError):
                await self.send(
                    ReportClientStats(name=self.name, received=self.received, gaps=self.gaps),
                    timeout=every,
                )
            await self._renew_served(every)

    async def _renew_served(self, timeout: float) -> None:
        """Tell the supervisor which command types this process serves (renewed, like a
        subscription, so a restarted supervisor learns it again)."""
        if self._served:
            with contextlib.suppress(CommandError):
                await self.send(ServeCommands(types=sorted(self._served)), timeout=timeout)

    # -- commands -------------------------------------------------------------------------

    async def send(
        self,
        command: Command,
        *,
        guild_id: int | None = None,
        shard: int | None = None,
        timeout: float = 10.0,
    ) -> Reply:
        """Send a command through the supervisor; returns its typed reply (an instance of
        ``command.reply_class`` when this process declares the reply's class), or raises
        :class:`CommandError` with the :class:`~ipc.messages.ErrorReply`."""
        options: dict[str, Any] = {}
        if guild_id is not None:
            options["guild_id"] = str(guild_id)
        if shard is not None:
            options["shard"] = shard
        body = await self._exchange(command.type_name, command.raw, options, timeout)
        try:
            reply = Reply.decode(body, command.reply_class)
        except ValueError as exc:
            raise CommandError(f"unreadable reply to {command.type_name}: {exc}") from None
        if isinstance(reply, ErrorReply):
            raise CommandError(str(reply.raw.get("error")), reply)
        return reply

    async def ask(self, command: Command, expected: type[R], **kwargs: Any) -> R:
        """:meth:`send`, checking that the reply is an ``expected``."""
        reply = await self.send(command, **kwargs)
        if not isinstance(reply, expected):
            raise CommandError(f"{command.type_name} got {reply!r}, not a {expected.__name__}")
        return reply

    async def join_voice(self, guild_id: int, channel_id: int) -> Reply:
        """Join (or move to) a voice channel: the supervisor starts the guild's voice process."""
        return await self.send(JoinVoice(guild_id=guild_id, channel_id=channel_id))

    async def leave_voice(self, guild_id: int) -> Reply:
        return await self.send(LeaveVoice(guild_id=guild_id))

    async def play(self, guild_id: int, path: str, *, queue: bool = False) -> Reply:
        """Play an audio file (anything ffmpeg reads; ``.pcm`` is raw s16le 48 kHz stereo);
        with ``queue``, after what is playing."""
        return await self.send(
            PlayAudio(guild_id=guild_id, path=os.path.abspath(path), queue=queue)
        )

    async def stop_playing(self, guild_id: int) -> Reply:
        return await self.send(StopAudio(guild_id=guild_id))

    async def pause(self, guild_id: int) -> Reply:
        return await self.send(PauseAudio(guild_id=guild_id))

    async def resume(self, guild_id: int) -> Reply:
        return await self.send(ResumeAudio(guild_id=guild_id))

    async def set_volume(self, guild_id: int, volume: float) -> Reply:
        """Scale the guild's playback (1.0 = as is, up to 2.0)."""
        return await self.send(SetVolume(guild_id=guild_id, volume=volume))

    async def record(self, guild_id: int, *, stop: bool = False) -> Recording:
        """Record every member of the guild's call to one WAV file each; the reply names
        the directory. ``stop=True`` ends the recording (and closes the files)."""
        return await self.ask(Record(guild_id=guild_id, stop=stop), Recording)

    async def request(
        self,
        type_name: str,
        body: Any,
        options: dict[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """The raw request: any type name and JSON body; the reply's JSON object as is (for
        commands this process has no class for)."""
        body_bytes = await self._exchange(type_name, body, options or {}, timeout)
        reply = orjson.loads(body_bytes)
        return reply if isinstance(reply, dict) else {"ok": False, "error": repr(reply)}

    async def _exchange(
        self, type_name: str, body: Any, options: dict[str, Any], timeout: float
    ) -> bytes:
        if self._closed.is_set():
            raise CommandError("the client is closed")
        if self._dealer is None:
            self.connect([])
        assert self._dealer is not None
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_replies())
            await self._renew_served(timeout)
        request_id = str(next(self._ids)).encode()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        frames = request_frames(request_id, type_name, body, options)
        # One bound for the send (a DEALER with no supervisor behind it waits to send) and
        # the reply; asyncio.timeout, unlike wait_for on 3.11, never swallows a cancel.
        try:
            async with asyncio.timeout(timeout):
                await self._dealer.send_multipart(frames)
                return await future
        except zmq.ZMQError as exc:
            raise CommandError(f"cannot send to the supervisor: {exc}") from None
        except TimeoutError:
            raise CommandError(
                f"no reply from the supervisor at {self.commands_endpoint} within {timeout}s",
                ErrorReply.of(ErrorCode.TIMEOUT, "no reply"),
            ) from None
        finally:
            self._pending.pop(request_id, None)

    async def _read_replies(self) -> None:
        assert self._dealer is not None
        while True:
            frames = await self._dealer.recv_multipart()
            if len(frames) == 2:
                future = self._pending.get(frames[0])
                if future is not None and not future.done():
                    future.set_result(frames[1])
                continue
            call = decode_call(list(frames))
            if call is not None:
                task = asyncio.get_running_loop().create_task(self._answer(call))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)

    async def _answer(self, call: RawRequest) -> None:
        """Run the handler this process serves ``call``'s type with; send its reply back."""
        served = self._served.get(call.type_name)
        reply: Reply
        if served is None:
            reply = ErrorReply.of(
                ErrorCode.UNKNOWN_COMMAND, f"{call.type_name} is not served here any more"
            )
        else:
            cls, handler = served
            command = cls.from_raw(call.body)
            try:
                command.validate()
                result = handler(command)
                reply = await result if asyncio.iscoroutine(result) else result  # type: ignore[assignment]
                if not isinstance(reply, Reply):
                    raise TypeError(f"the handler returned {reply!r}, not a Reply")
            except CommandError as exc:
                reply = exc.reply or ErrorReply.of(ErrorCode.INVALID, str(exc))
            except InvalidFieldError as exc:
                reply = ErrorReply.invalid(call.type_name, exc)
            except Exception as exc:  # the application's bug: the requester hears of it
                reply = ErrorReply.of(
                    ErrorCode.INTERNAL, f"the handler of {call.type_name} failed: {exc!r}"
                )
        body = orjson.loads(reply.encode())
        result_command = CommandResult(call=call.request_id.decode(errors="replace"), reply=body)
        with contextlib.suppress(CommandError):
            await self.send(result_command, timeout=5.0)

    async def wait_closed(self) -> None:
        """Return when :meth:`close` is called (an app's ``main`` can end with this)."""
        await self._closed.wait()

    def close(self) -> None:
        self._closed.set()
        if self._reader is not None:
            self._reader.cancel()
        for task in list(self._calls):
            task.cancel()
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
    command: Command,
    timeout: float = 5.0,
    server_key: str | None = None,
    client_key: str | None = None,
) -> Reply:
    """One request and its typed reply from a plain (non-async) program, e.g. the CLI.
    An :class:`~ipc.messages.ErrorReply` is returned, not raised; no answer raises
    :class:`CommandError`."""
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
            sock.send_multipart(encode_request(b"1", command), flags=zmq.NOBLOCK)
        except zmq.Again:
            raise no_answer from None
        if not sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            raise no_answer
        _, body = sock.recv_multipart()
        try:
            return Reply.decode(body, command.reply_class)
        except ValueError as exc:
            raise CommandError(f"unreadable reply from {endpoint}: {exc}") from None
    finally:
        with contextlib.suppress(zmq.ZMQError):
            sock.close()
