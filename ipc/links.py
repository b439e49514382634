"""A worker's two ZeroMQ links, the worker side of the wire whose other side is the
supervisor's: the event bus (publish, never block) and the control socket. Both the shard and
the voice process use them; they live in ``ipc/`` with the rest of the wire (the connection
skeleton in ``conn/`` knows nothing of ZeroMQ).

The publisher is an XPUB that connects to the bus; it waits for the bus to subscribe before
the shard connects to Discord, so nothing is published into the void at start-up. Sends are
non-blocking: at the high-water mark a message is dropped and counted, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from ipc.codec import Envelope, decode_command, encode_bus_event, encode_control, topic_for
from ipc.control import WorkerHello
from ipc.messages import Command, Event

__all__ = ["ControlLink", "EventPublisher", "NullPublisher"]

_ctx: zmq.Context[Any] | None = None
_MORE = int(zmq.SNDMORE)
# Dispatches ZeroMQ may queue toward the bus before a shard holds the rest and pauses its
# reading (shards/loop.py): a few MB of messages, so a burst the bus cannot take at once
# waits in Discord's TCP stream, not in the shard's memory.
PUBLISH_HWM = 1000
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

try:  # pyzmq's Cython send, without the Python wrapper: a third of the cost of a publish
    from zmq.backend.cython._zmq import Socket as _BackendSocket

    _raw_send: Any = _BackendSocket.send
except ImportError:  # another pyzmq backend: the public method
    _raw_send = zmq.Socket.send


def context() -> zmq.Context[Any]:
    global _ctx
    if _ctx is None:
        _ctx = zmq.Context.instance()
    return _ctx


def shutdown() -> None:
    """Deliver what is queued (within each socket's linger) and end ZeroMQ's threads; a
    process that ends with os._exit (a forked shard) would otherwise drop its last words."""
    global _ctx
    if _ctx is not None:
        _ctx.term()
        _ctx = None


class NullPublisher:
    """Publishes nowhere (a shard run by hand without a bus); counts what it was given."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.published = 0
        self.dropped = 0
        self.on_event: Callable[[Event], None] | None = None

    async def wait_subscribed(self, timeout: float) -> bool:
        return True

    def dispatch(self, t: str, raw: bytes, seq: int | None, session: str | None) -> bool:
        self.published += 1
        return True

    def event(self, event: Event) -> None:
        self.published += 1
        if self.on_event is not None:
            self.on_event(event)

    def close(self, linger: float = 1.0) -> None:
        pass


class EventPublisher(NullPublisher):
    """XPUB connected to the bus's XSUB (or a test's SUB)."""

    def __init__(self, endpoint: str, source: str, *, hwm: int = PUBLISH_HWM) -> None:
        super().__init__(source)
        sock = context().socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # full: send raises Again, so drops are counted
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(endpoint)
        self.sock = sock
        self._topics: dict[str, bytes] = {}
        self._envelopes: dict[str | None, bytes] = {}

    async def wait_subscribed(self, timeout: float) -> bool:
        """Wait until a subscriber has subscribed (the bus, or a test). False on timeout."""
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while time.monotonic() < deadline:
            if poller.poll(0):
                msg = self.sock.recv()
                if msg[:1] == b"\x01":
                    return True
                continue
            await asyncio.sleep(0.01)
        return False

    def dispatch(self, t: str, raw: bytes, seq: int | None, session: str | None) -> bool:
        """Publish one dispatch; False (nothing sent) when ZeroMQ's queue to the bus is
        full: the caller holds it and tries again (shards/loop.py)."""
        topic = self._topics.get(t)
        if topic is None:
            topic = self._topics[t] = topic_for(t, self.source)
        # The envelope JSON (ipc.codec.Envelope) built from a cached prefix: this runs per
        # dispatch, and encoding a dict each time costs more than the rest of the publish.
        prefix = self._envelopes.get(session)
        if prefix is None:
            template = Envelope(self.source, "dispatch", session, 0, 0).encode()
            prefix = self._envelopes[session] = template[: template.index(b'"seq":') + 6]
        envelope = b'%s%s,"received_ns":"%d"}' % (
            prefix,
            b"null" if seq is None else b"%d" % seq,
            time.time_ns(),
        )
        send = _raw_send
        sock = self.sock
        try:
            send(sock, topic, _MORE_NOBLOCK)
        except zmq.Again:
            return False
        send(sock, envelope, _MORE)  # the first part was queued: the rest of it goes too
        send(sock, raw, 0)
        self.published += 1
        return True

    def event(self, event: Event) -> None:
        try:
            self.sock.send_multipart(
                encode_bus_event(event, self.source, time.time_ns()), flags=zmq.NOBLOCK
            )
            self.published += 1
        except zmq.Again:
            self.dropped += 1
        if self.on_event is not None:
            self.on_event(event)

    def close(self, linger: float = 1.0) -> None:
        self.sock.close(linger=int(linger * 1000))


class ControlLink:
    """DEALER to the supervisor's control ROUTER; identity ``shard:N`` / ``voice:GUILD``."""

    def __init__(self, endpoint: str, identity: str) -> None:
        import zmq.asyncio  # only workers under a supervisor pay for it

        self.actx = zmq.asyncio.Context.shadow(context())
        sock = self.actx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity.encode())
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.connect(endpoint)
        self.sock = sock
        self.identity = identity

    def send(self, message: Event | Command) -> bool:
        """Non-blocking; False when the supervisor is not keeping up (message dropped)."""
        try:
            self.sock.send_multipart(encode_control(message), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def hello(self, kind: str, worker_id: str) -> None:
        self.send(WorkerHello(kind=kind, worker_id=worker_id, pid=os.getpid()))

    async def receive(self) -> Command:
        """The next command from the supervisor (raises CodecError on a bad one)."""
        frames = await self.sock.recv_multipart()
        return decode_command(list(frames))

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.close(linger=1000)
