"""The event bus: workers publish into it, each application gets its own bounded feed.

Workers' publishers connect to an XSUB (``bus-in.sock``). Applications connect a DEALER to
the events endpoint (a ROUTER) and send ``[b"SUBSCRIBE", name, prefix...]`` (again every few
seconds: that keeps the subscription alive, and renews it after a supervisor restart); every
bus message whose topic starts with one of the prefixes reaches them as the same three
frames as before, ``[topic, envelope, body]``.

Each subscriber has a queue bounded in **bytes** (``bus.subscriber_buffer_bytes``), behind at
most ``PIPE_HWM`` messages ZeroMQ holds on their way out. The
policy for one that falls behind: the bus never waits for it (a shard's loop must never
wait on IPC, and one slow application must not slow the others); once its queue is full,
its newest messages are dropped and counted (``dropped``, ``dropped_bytes`` per subscriber in
``shardline status``), and it sees the gap in each session's seq. The queue drains as the
subscriber reads; the bus says once per episode when a subscriber starts and stops losing.
A subscriber silent for ``SUBSCRIPTION_TTL`` seconds, or gone, is forgotten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from ipc.codec import SUBSCRIBE, encode_bus_event
from ipc.errors import EventsDropped
from ipc.eventloop import trim_memory
from ipc.status import SubscriberRecord

__all__ = ["DEFAULT_SUBSCRIBER_BUFFER", "SUBSCRIPTION_TTL", "EventBus"]

log = logging.getLogger("shardline.supervisor")
SUBSCRIPTION_TTL = 30.0  # seconds without a SUBSCRIBE before a subscriber is forgotten
DEFAULT_SUBSCRIBER_BUFFER = 64 * 1024 * 1024
MAX_SUBSCRIBERS = 1024
MAX_PREFIXES = 64
# Messages ZeroMQ itself may hold per subscriber on its way out, beyond the byte-counted
# queue: enough to keep a reading subscriber fed while the bus reads its input.
PIPE_HWM = 1000
# What a queued message costs beyond its bytes (its list and bytes objects), counted in the
# budget so that it bounds memory, not just payload.
MESSAGE_OVERHEAD = 200
TRIM_AFTER_BACKLOG = 1 << 20  # a drained backlog this large is handed back to the system
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

try:  # pyzmq's Cython send without the Python wrapper (as the shard's publisher uses it)
    from zmq.backend.cython._zmq import Socket as _BackendSocket

    _raw_send: Any = _BackendSocket.send
except ImportError:  # another pyzmq backend: the public method
    _raw_send = zmq.Socket.send
_FLUSH_EVERY = 0.005  # with a backlog, how often a stalled subscriber is retried (s)


@dataclass
class Subscriber:
    identity: bytes
    name: str
    prefixes: tuple[bytes, ...]
    seen_at: float
    queue: deque[list[Any]] = field(default_factory=deque)
    queued_bytes: int = 0
    delivered: int = 0
    dropped: int = 0
    dropped_bytes: int = 0
    losing: bool = False  # dropping now (said once per episode)
    unreported: int = 0  # dropped since the subscriber was last told (EventsDropped)
    backlog_peak: int = 0  # the largest backlog (bytes) since it last drained

    def stats(self) -> SubscriberRecord:
        return SubscriberRecord(
            name=self.name,
            queued_bytes=self.queued_bytes,
            delivered=self.delivered,
            dropped=self.dropped,
            dropped_bytes=self.dropped_bytes,
        )


class EventBus:
    """The bus thread: XSUB in, one bounded queue per subscriber out through a ROUTER."""

    def __init__(
        self,
        context: zmq.Context[Any],
        bus_in: str,
        events: str,
        *,
        buffer_bytes: int = DEFAULT_SUBSCRIBER_BUFFER,
        secure: Callable[[zmq.Socket[Any]], None] = lambda sock: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.context = context
        self.buffer_bytes = buffer_bytes
        self.clock = clock
        self.subscribers: dict[bytes, Subscriber] = {}
        self._fanout: tuple[Subscriber, ...] = ()  # the same, as the hot path iterates it
        self._trimmed_at = -10.0
        self.received = 0
        self._lock = threading.Lock()  # guards the stats the supervisor reads
        self._thread: threading.Thread | None = None
        self.xsub = context.socket(zmq.XSUB)
        self.router = context.socket(zmq.ROUTER)
        try:
            self.xsub.bind(bus_in)
            self.xsub.send(b"\x01")  # everything: workers publish whether or not apps listen
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.router.setsockopt(zmq.SNDHWM, PIPE_HWM)
            self.router.setsockopt(zmq.LINGER, 0)
            secure(self.router)
            self.router.bind(events)
        except zmq.ZMQError:
            self.xsub.close(linger=0)
            self.router.close(linger=0)
            raise

    # -- the supervisor's side ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="event-bus", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        """After the context is terminated: wait for the thread to close its sockets."""
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def serving(self) -> bool:
        """The bus thread is running (it ends only with the supervisor or on a fault)."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> list[SubscriberRecord]:
        with self._lock:
            return [s.stats() for s in self.subscribers.values()]

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.xsub, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        next_sweep = self.clock() + SUBSCRIPTION_TTL
        try:
            while True:
                backlog = any(s.queue for s in self.subscribers.values())
                ready = dict(poller.poll(int(_FLUSH_EVERY * 1000) if backlog else 1000))
                if self.router in ready:
                    self._read_subscriptions()
                if self.xsub in ready:
                    self._read_events()
                if backlog:
                    self._flush_all()
                now = self.clock()
                if now >= next_sweep:
                    self._forget_silent(now)
                    next_sweep = now + SUBSCRIPTION_TTL / 3
        except zmq.ContextTerminated:
            pass
        finally:
            self.xsub.close(linger=0)
            self.router.close(linger=0)

    def _read_subscriptions(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, body = frames[0], frames[1:]
            if len(body) < 2 or body[0] != SUBSCRIBE or len(body) > MAX_PREFIXES + 2:
                log.warning(
                    "bus: a message from a subscriber that is not [SUBSCRIBE, name, prefix...]"
                )
                continue
            name = body[1][:128].decode(errors="replace")
            prefixes = tuple(p[:256] for p in body[2:]) or (b"",)
            with self._lock:
                known = self.subscribers.get(identity)
                if known is not None:
                    known.prefixes, known.name, known.seen_at = prefixes, name, self.clock()
                elif len(self.subscribers) < MAX_SUBSCRIBERS:
                    self.subscribers[identity] = Subscriber(identity, name, prefixes, self.clock())
                    self._fanout = tuple(self.subscribers.values())
                    log.info(f"bus: subscriber {name} joined")
                else:
                    log.warning(f"bus: {MAX_SUBSCRIBERS} subscribers already; {name} refused")

    def _read_events(self) -> None:
        for _ in range(1000):  # then let subscriptions and flushes have their turn
            # Copied out, as bytes: for messages of a few KB that is cheaper than zero-copy
            # frames, and a queued frame would pin ZeroMQ's whole 8 KB receive buffer.
            try:
                frames = self.xsub.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            topic = frames[0]
            for sub in self._fanout:
                if not topic.startswith(sub.prefixes):
                    continue
                if sub.queue:
                    self._flush(sub)  # what waits goes first: order is kept
                if not sub.queue and not sub.unreported and self._send(sub, frames):
                    continue  # the usual case: straight through
                self._enqueue(sub, frames)
            self.received += 1  # counted once handed out: a reader of it sees every drop made

    def _enqueue(self, sub: Subscriber, frames: list[Any]) -> None:
        size = sum(len(f) for f in frames) + MESSAGE_OVERHEAD
        if sub.queued_bytes + size > self.buffer_bytes:
            sub.dropped += 1
            sub.unreported += 1
            sub.dropped_bytes += size
            if not sub.losing:
                sub.losing = True
                log.warning(
                    f"bus: subscriber {sub.name} fell behind: its {self.buffer_bytes} byte "
                    "buffer is full, so its newest events are dropped (and counted) until it "
                    "catches up"
                )
            return
        if sub.unreported:  # the loss is over: say so first, whatever the subscription
            notice = encode_bus_event(
                EventsDropped(
                    message=f"{sub.unreported} events were dropped for this subscriber: its "
                    "buffer in the supervisor (bus.subscriber_buffer_bytes) was full",
                    source="supervisor",
                    dropped=sub.unreported,
                ),
                "supervisor",
                time.time_ns(),
            )
            sub.unreported = 0
            sub.queue.append(notice)
            sub.queued_bytes += sum(len(f) for f in notice) + MESSAGE_OVERHEAD
        sub.queue.append(frames)
        sub.queued_bytes += size
        sub.backlog_peak = max(sub.backlog_peak, sub.queued_bytes)

    def _send(self, sub: Subscriber, frames: list[Any]) -> bool:
        """True when ZeroMQ took the message; False when the subscriber's pipe is full.
        A subscriber that is gone is forgotten."""
        router = self.router
        try:
            # The identity frame decides: once ZeroMQ takes it, the rest cannot be refused.
            _raw_send(router, sub.identity, _MORE_NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self._forget(sub, "gone")
                return True
            raise
        last = len(frames) - 1
        for n, frame in enumerate(frames):
            _raw_send(router, frame, _NOBLOCK if n == last else _MORE_NOBLOCK)
        sub.delivered += 1
        return True

    def _flush_all(self) -> None:
        for sub in self._fanout:
            self._flush(sub)

    def _flush(self, sub: Subscriber) -> None:
        """Send what waits for ``sub``, oldest first, until its pipe is full."""
        if sub.queue:
            while sub.queue:
                frames = sub.queue[0]
                if not self._send(sub, frames):
                    break
                if sub.identity not in self.subscribers:
                    break
                sub.queue.popleft()
                sub.queued_bytes -= sum(len(f) for f in frames) + MESSAGE_OVERHEAD
            if sub.losing and not sub.queue:
                sub.losing = False
                log.info(
                    f"bus: subscriber {sub.name} caught up ({sub.dropped} events dropped so far)"
                )
            if not sub.queue and sub.backlog_peak >= TRIM_AFTER_BACKLOG:
                sub.backlog_peak = 0
                now = self.clock()
                if now - self._trimmed_at >= 10.0:
                    self._trimmed_at = now
                    trim_memory(collect=False)  # a large drained backlog's memory goes back

    def _forget_silent(self, now: float) -> None:
        for sub in list(self.subscribers.values()):
            if now - sub.seen_at > SUBSCRIPTION_TTL:
                self._forget(sub, f"silent for {SUBSCRIPTION_TTL:.0f}s")

    def _forget(self, sub: Subscriber, why: str) -> None:
        with self._lock:
            self.subscribers.pop(sub.identity, None)
            self._fanout = tuple(self.subscribers.values())
        sub.queue.clear()
        sub.queued_bytes = 0
        log.info(f"bus: subscriber {sub.name} forgotten ({why})")
