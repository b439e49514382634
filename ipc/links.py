"""A worker's two ZeroMQ links, the worker side of the wire whose other side is the
supervisor's: the event bus (publish, never block) and the control socket. Both the shard and
the voice process use them; they live in ``ipc/`` with the rest of the wire (the connection
skeleton in ``conn/`` knows nothing of ZeroMQ).

The publisher is an XPUB that connects to the bus; it waits for the bus to subscribe before
the shard connects to Discord, so nothing is published into the void at start-up. Dispatches
are batched: :meth:`EventPublisher.dispatch` adds one to the batch, :meth:`~EventPublisher.flush`
sends it (the shard flushes after each read of the gateway, so a quiet shard sends each
dispatch alone and a burst goes in batches of up to ``BATCH_BYTES``). Sends are non-blocking:
at the high-water mark the batch is refused, never waited for (the shard holds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from ipc.codec import (
    BATCH,
    Envelope,
    decode_command,
    encode_bus_event,
    encode_control,
    pack_batch,
    topic_for,
)
from ipc.control import WorkerHello
from ipc.messages import Command, Event

__all__ = ["ControlLink", "EventPublisher", "NullPublisher"]

_ctx: zmq.Context[Any] | None = None
_MORE = int(zmq.SNDMORE)
# Messages (batches, or dispatches sent alone) ZeroMQ may queue toward the bus before a shard
# holds the rest and pauses its reading (shards/loop.py): a few MB at most, so a burst the
# bus cannot take at once waits in Discord's TCP stream, not in the shard's memory.
PUBLISH_HWM = 20
# A batch is sent once it holds this many bytes (or at the end of a read of the gateway).
BATCH_BYTES = 32 * 1024
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

    @property
    def pending(self) -> int:
        """Dispatches taken but not yet handed to ZeroMQ (see :meth:`flush`)."""
        return 0

    def dispatch(self, t: str, raw: bytes, seq: int | None, session: str | None) -> bool:
        self.published += 1
        return True

    def flush(self) -> bool:
        """Hand the pending dispatches to ZeroMQ; False when it takes none now (full)."""
        return True

    def discard(self) -> int:
        """Drop the pending dispatches (counted in ``dropped``); how many."""
        return 0

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
        self._batch: list[bytes] = []  # topic, envelope, body of each pending dispatch
        self._batch_bytes = 0

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

    @property
    def pending(self) -> int:
        return len(self._batch) // 3

    def dispatch(self, t: str, raw: bytes, seq: int | None, session: str | None) -> bool:
        """Add one dispatch to the batch; False (nothing taken) when the batch is full and
        ZeroMQ's queue to the bus too: the caller holds it and tries again (shards/loop.py)."""
        if self._batch_bytes >= BATCH_BYTES and not self.flush():
            return False
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
        batch = self._batch
        batch.append(topic)
        batch.append(envelope)
        batch.append(raw)
        self._batch_bytes += len(raw) + 200
        return True

    def flush(self) -> bool:
        """Send the batch: alone, a dispatch as its three frames; several, as one
        ``[BATCH, packed]`` message (docs/wire.md). False when ZeroMQ's queue is full."""
        batch = self._batch
        if not batch:
            return True
        send = _raw_send
        sock = self.sock
        try:  # the first frame decides: once it is queued, the rest of the message goes too
            if len(batch) == 3:
                send(sock, batch[0], _MORE_NOBLOCK)
                send(sock, batch[1], _MORE)
                send(sock, batch[2], 0)
            else:
                send(sock, BATCH, _MORE_NOBLOCK)
                send(sock, pack_batch(batch), 0)
        except zmq.Again:
            return False
        self.published += len(batch) // 3
        self._batch = []
        self._batch_bytes = 0
        return True

    def discard(self) -> int:
        count = len(self._batch) // 3
        self.dropped += count
        self._batch = []
        self._batch_bytes = 0
        return count

    def event(self, event: Event) -> None:
        """Publish a shardline event, after the pending dispatches (dropped and counted when
        ZeroMQ's queue is full; the shard sends checkpoints only once the batch went)."""
        self.flush()
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
        self.flush()
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
