"""The event bus: workers publish into it, each application gets its own bounded feed.

Workers' publishers connect to an XSUB (``bus-in.sock``). Applications connect a DEALER to
the events endpoint (a ROUTER) and send ``[b"SUBSCRIBE", name, prefix...]`` (again every few
seconds: that keeps the subscription alive, and renews it after a supervisor restart); every
bus message whose topic starts with one of the prefixes reaches them as the same three
frames as before, ``[topic, envelope, body]``. Shards publish a burst in batches
(``[BATCH, packed]``, ipc/codec.py); a subscriber that sends ``SUBSCRIBE_BATCHED`` instead
gets them as batches (of the messages it subscribed to), the others one message at a time.

Each subscriber has a queue bounded in **bytes** (``bus.subscriber_buffer_bytes``), behind at
most ``PIPE_HWM`` messages ZeroMQ holds on their way out. The
policy for one that falls behind: the bus never waits for it (one slow application must not
slow the others); once its queue is full, its newest messages are dropped and counted
(``dropped``, ``dropped_bytes`` per subscriber in ``shardline status``), and it sees the gap
in each session's seq. The queue drains as the subscriber reads; the bus says once per
episode when a subscriber starts and stops losing. A subscriber silent for
``SUBSCRIPTION_TTL`` seconds, or gone, is forgotten.

A burst that **every** subscriber is behind on is another matter: nobody would gain from the
bus reading on, so while each has ``PAUSE_BYTES`` queued and one of them took a message in
the last ``PAUSE_LIMIT`` seconds, the bus stops reading its inputs. The shards' queues to it
fill, they hold and stop reading the gateway, and the burst waits in Discord's TCP stream
instead of in the supervisor's memory. (A subscriber that takes nothing for ``PAUSE_LIMIT``
does not hold the others back: the bus reads on, and drops for it as above.)

In a multi-host fleet (``[cluster]``) the bus also carries events between hosts: every
event published on this host is pushed to every other live host (a PUSH socket per host,
with the same bounded queue and counted drops as a subscriber), and what other hosts push
arrives on this bus's peer endpoint (PULL) and goes to this host's subscribers only, never
on to a third host. So an application on any host receives the whole fleet's events.
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

from ipc.codec import (
    BATCH,
    SUBSCRIBE,
    SUBSCRIBE_BATCHED,
    CodecError,
    batch_count,
    batch_topics,
    encode_bus_event,
    pack_batch,
    unpack_batch,
)
from ipc.errors import EventsDropped
from ipc.eventloop import trim_memory
from ipc.status import SubscriberRecord
from runtime.cutover import CutOver, is_dispatch

__all__ = ["DEFAULT_SUBSCRIBER_BUFFER", "SUBSCRIPTION_TTL", "EventBus", "PeerAddress", "dial"]

log = logging.getLogger("shardline.supervisor")
SUBSCRIPTION_TTL = 30.0  # seconds without a SUBSCRIBE before a subscriber is forgotten
DEFAULT_SUBSCRIBER_BUFFER = 64 * 1024 * 1024
MAX_SUBSCRIBERS = 1024
MAX_PREFIXES = 64
# Messages ZeroMQ itself may hold per subscriber on its way out, beyond the byte-counted
# queue: enough to keep a reading subscriber fed while the bus reads its input (a batch is
# up to ~32 KB, so well under 1 MB; the burst itself waits in the queue or in the shards).
PIPE_HWM = 20
_EVERYTHING = (b"",)
# What a queued message costs beyond its bytes (its list and bytes objects), counted in the
# budget so that it bounds memory, not just payload.
MESSAGE_OVERHEAD = 200
TRIM_AFTER_BACKLOG = 1 << 20  # a drained backlog this large is handed back to the system
PAUSE_BYTES = 1 << 19  # queued for every subscriber: the bus stops reading its inputs...
PAUSE_LIMIT = 1.0  # ...while one of them took something within this many seconds
# Messages (batches of up to ~32 KB, or single events) ZeroMQ may hold on their way in from
# the workers while the bus reads or pauses: a few MB.
INPUT_HWM = 20
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

try:  # pyzmq's Cython send without the Python wrapper (as the shard's publisher uses it)
    from zmq.backend.cython._zmq import Socket as _BackendSocket

    _raw_send: Any = _BackendSocket.send
except ImportError:  # another pyzmq backend: the public method
    _raw_send = zmq.Socket.send
_FLUSH_EVERY = 0.001  # with a backlog, how often a stalled subscriber is retried (s)


@dataclass(frozen=True)
class PeerAddress:
    """Where another host of the fleet takes this host's events, and its CURVE key."""

    endpoint: str
    server_key: str = ""  # empty: an ipc:// endpoint, no CURVE
    batches: bool = False  # its bus takes batches (a host of an older version does not)


def dial(
    context: Any,
    kind: int,
    address: PeerAddress,
    secure: Callable[[zmq.Socket[Any], str], None],
    hwm: int = PIPE_HWM,
) -> Any:
    """A ``kind`` socket of ``context`` connected to another host's ``address`` (a CURVE
    client of its key); closed again, and the ZMQError raised, when that fails."""
    sock = context.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        secure(sock, address.server_key)
        sock.connect(address.endpoint)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


@dataclass
class Subscriber:
    identity: bytes
    name: str
    prefixes: tuple[bytes, ...]
    seen_at: float
    link: zmq.Socket[Any] | None = None  # another host's bus (PUSH); else via the ROUTER
    batched: bool = False  # takes batches ([BATCH, packed]) as well as single messages
    # messages waiting for ZeroMQ to take them, each with how many events it carries
    queue: deque[tuple[list[Any], int]] = field(default_factory=deque)
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
        peer_in: str = "",
        secure_peer_in: Callable[[zmq.Socket[Any]], None] = lambda sock: None,
        secure_link: Callable[[zmq.Socket[Any], str], None] = lambda sock, key: None,
        host: str = "",
        bus_in_b: str = "",
    ) -> None:
        self.context = context
        self.buffer_bytes = buffer_bytes
        self.clock = clock
        self.subscribers: dict[bytes, Subscriber] = {}
        self._fanout: tuple[Subscriber, ...] = ()  # the same, as the hot path iterates it
        self._trimmed_at = -10.0
        self.received = 0
        self.paused = False  # not reading the inputs: every subscriber is behind
        self._took_at = -PAUSE_LIMIT  # when a subscriber last took a message
        self._lock = threading.Lock()  # guards the stats the supervisor reads
        self._thread: threading.Thread | None = None
        self.host = host
        self.secure_link = secure_link
        self.links: dict[str, Subscriber] = {}  # other hosts' buses, by host name
        self.peer_received = 0
        self.xsub = context.socket(zmq.XSUB)
        # A second input for a reshard's other generation of shards (docs/resharding.md):
        # generations alternate between "a" (bus_in) and "b" (bus_in_b).
        self.xsub_b: zmq.Socket[Any] | None = context.socket(zmq.XSUB) if bus_in_b else None
        self.cutover: CutOver | None = None
        self._cutover_old = ""  # the input of the generation being replaced
        self._cutover_new = ""  # and of the one replacing it
        # The input of the generation a finished cut-over retired (the old one, or the new
        # one of an aborted reshard): its shards' last dispatches, still on their way, are
        # not delivered (the applications had them from the other generation).
        self._retired = ""
        # In a fleet, which generation of shards each input carries (its key space, "" for
        # the fleet's first): events go to other hosts tagged with it, so that each host
        # runs its own cut-over on the whole fleet's events (docs/resharding.md).
        self._tags = {"a": b"", "b": b""}
        self._current = b""  # the generation the applications get, outside a cut-over
        self.other_generation = 0  # dispatches of a generation not delivered here (a retired
        # one's late ones, or another host's of a generation not staged here)
        # What the supervisor's thread asks of the bus thread (set_peers, reshard), in order
        self._actions: list[tuple[str, Any, threading.Event]] = []
        self.router = context.socket(zmq.ROUTER)
        self.peer_in: zmq.Socket[Any] | None = None
        wake = f"inproc://bus-wake-{id(self)}"
        self._wake_in = context.socket(zmq.PULL)
        self._wake_in.bind(wake)
        self._wake = context.socket(zmq.PUSH)  # the supervisor's thread pokes the bus with it
        self._wake.connect(wake)
        try:
            self.xsub.setsockopt(zmq.RCVHWM, INPUT_HWM)
            self.xsub.bind(bus_in)
            self.xsub.send(b"\x01")  # everything: workers publish whether or not apps listen
            if self.xsub_b is not None:
                self.xsub_b.setsockopt(zmq.RCVHWM, INPUT_HWM)
                self.xsub_b.bind(bus_in_b)
                self.xsub_b.send(b"\x01")
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.router.setsockopt(zmq.SNDHWM, PIPE_HWM)
            self.router.setsockopt(zmq.LINGER, 0)
            secure(self.router)
            self.router.bind(events)
            if peer_in:
                self.peer_in = context.socket(zmq.PULL)
                self.peer_in.setsockopt(zmq.LINGER, 0)
                self.peer_in.setsockopt(zmq.RCVHWM, INPUT_HWM)
                secure_peer_in(self.peer_in)
                self.peer_in.bind(peer_in)
        except zmq.ZMQError as exc:
            self._close_sockets()
            if self.peer_in is not None:  # the peer endpoint is the one that failed
                exc.endpoint = peer_in  # type: ignore[attr-defined]
            raise

    def _close_sockets(self) -> None:
        for sock in (self.xsub, self.xsub_b, self.router, self.peer_in, self._wake_in, self._wake):
            if sock is not None:
                sock.close(linger=0)
        for link in self.links.values():
            if link.link is not None:
                link.link.close(linger=0)

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
            return [s.stats() for s in (*self.subscribers.values(), *self.links.values())]

    def endpoint(self, which: str) -> str:
        """The endpoint ``which`` ("events" or "peer_in") is bound to, ports resolved."""
        sock = self.router if which == "events" else self.peer_in
        if sock is None:
            return ""
        value = sock.getsockopt(zmq.LAST_ENDPOINT)
        return value.decode() if isinstance(value, bytes) else str(value)

    def set_peers(self, peers: dict[str, PeerAddress]) -> threading.Event:
        """Push this host's events to exactly these hosts from now on (from the supervisor's
        thread). The returned event is set once the bus has opened the links: from then on,
        whatever this host publishes reaches them (queued until each connection is up)."""
        return self._ask("peers", dict(peers))

    def _ask(self, action: str, payload: Any) -> threading.Event:
        """Hand ``action`` to the bus thread (which owns the sockets); the event is set
        once it is done."""
        done = threading.Event()
        with self._lock:
            self._actions.append((action, payload, done))
        try:
            self._wake.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # a wake-up is already waiting, or the bus is closing
        return done

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        inputs = [sock for sock in (self.xsub, self.xsub_b, self.peer_in) if sock is not None]
        for sock in inputs:
            poller.register(sock, zmq.POLLIN)
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._wake_in, zmq.POLLIN)
        next_sweep = self.clock() + SUBSCRIPTION_TTL
        try:
            while True:
                backlog = any(s.queue for s in self._fanout) or any(
                    s.queue for s in self.links.values()
                )
                paused = backlog and self._everyone_behind()
                if paused != self.paused:
                    self.paused = paused
                    for sock in inputs:
                        poller.register(sock, 0 if paused else zmq.POLLIN)
                ready = dict(poller.poll(int(_FLUSH_EVERY * 1000) if backlog else 1000))
                if self._wake_in in ready:
                    self._apply_actions()
                if self.router in ready:
                    self._read_subscriptions()
                if self.xsub in ready:
                    self._read_events(self.xsub, "a")
                if self.xsub_b is not None and self.xsub_b in ready:
                    self._read_events(self.xsub_b, "b")
                if self.peer_in is not None and self.peer_in in ready:
                    self._read_peer_events(self.peer_in)
                if backlog:
                    self._flush_all()
                now = self.clock()
                if now >= next_sweep:
                    self._forget_silent(now)
                    next_sweep = now + SUBSCRIPTION_TTL / 3
        except zmq.ContextTerminated:
            pass
        finally:
            self._close_sockets()

    def _everyone_behind(self) -> bool:
        """Every subscriber (and link to another host) has PAUSE_BYTES queued, and one of
        them took something lately: reading on would only grow the queues."""
        subscribers = (*self._fanout, *self.links.values())
        return (
            bool(subscribers)
            and self.clock() - self._took_at < PAUSE_LIMIT
            and all(sub.queued_bytes >= PAUSE_BYTES for sub in subscribers)
        )

    def _apply_links(self, wanted: dict[str, PeerAddress]) -> None:
        """Open links to the hosts the supervisor named, close those to hosts gone."""
        for name in [n for n, link in self.links.items() if n not in wanted]:
            self._close_link(name, "it left the fleet")
        for name, address in wanted.items():
            known = self.links.get(name)
            if (
                known is not None
                and known.identity == address.endpoint.encode()
                and known.batched == address.batches
            ):
                continue
            if known is not None:
                self._close_link(name, "it moved, or took another version")
            try:
                sock = dial(self.context, zmq.PUSH, address, self.secure_link)
            except zmq.ZMQError as exc:
                log.warning(f"bus: cannot reach host {name} at {address.endpoint}: {exc}")
                continue
            link = Subscriber(
                address.endpoint.encode(),
                f"host:{name}",
                _EVERYTHING,
                0.0,
                link=sock,
                batched=address.batches,
            )
            with self._lock:
                self.links[name] = link
            log.info(f"bus: this host's events go to host {name} too ({address.endpoint})")

    def _close_link(self, name: str, why: str) -> None:
        with self._lock:
            link = self.links.pop(name)
        if link.link is not None:
            link.link.close(linger=0)
        log.info(f"bus: no more events to host {name} ({why})")

    def _read_peer_events(self, sock: zmq.Socket[Any]) -> None:
        """Events another host pushed, ``[topic, envelope, body]`` or a batch, and the
        generation's tag when it is not the fleet's first: to this host's subscribers (never
        to other hosts), through the cut-over when a reshard is under way."""
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            tag = b""
            size = 2 if frames[0] == BATCH else 3
            if len(frames) == size + 1:
                tag = frames.pop()
            elif len(frames) != size:
                log.warning(f"bus: a {len(frames)}-frame message from another host; dropped")
                continue
            count = self._count(frames, "another host")
            if not count:
                continue
            self.peer_received += count
            cutover = self.cutover
            if cutover is None and tag == self._current:
                self._fan_out(frames, self._fanout, count)
                continue
            for message in unpack_batch(frames[1]) if size == 2 else [frames]:
                if cutover is None:
                    if not is_dispatch(message):
                        self._fan_out(message, self._fanout)
                    else:
                        self.other_generation += 1
                elif tag == self._tags[self._cutover_old]:
                    if cutover.old(message):
                        self._fan_out(message, self._fanout)
                elif tag == self._tags[self._cutover_new]:
                    for out in cutover.new(message):
                        self._fan_out(out, self._fanout)
                elif not is_dispatch(message):
                    self._fan_out(message, self._fanout)
                else:
                    self.other_generation += 1

    @staticmethod
    def _count(frames: list[Any], origin: str) -> int:
        """How many events a message carries (a batch: its count); 0 for a broken batch."""
        if frames[0] != BATCH:
            return 1
        try:
            return batch_count(frames[1]) if len(frames) == 2 else 0
        except CodecError as exc:
            log.warning(f"bus: a broken batch from {origin} ({exc}); dropped")
            return 0

    def _read_subscriptions(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, body = frames[0], frames[1:]
            if (
                len(body) < 2
                or body[0] not in (SUBSCRIBE, SUBSCRIBE_BATCHED)
                or len(body) > MAX_PREFIXES + 2
            ):
                log.warning(
                    "bus: a message from a subscriber that is not [SUBSCRIBE, name, prefix...]"
                )
                continue
            name = body[1][:128].decode(errors="replace")
            prefixes = tuple(p[:256] for p in body[2:]) or _EVERYTHING
            if b"" in prefixes:
                prefixes = _EVERYTHING
            batched = body[0] == SUBSCRIBE_BATCHED
            with self._lock:
                known = self.subscribers.get(identity)
                if known is not None:
                    known.prefixes, known.name, known.seen_at = prefixes, name, self.clock()
                    known.batched = batched
                elif len(self.subscribers) < MAX_SUBSCRIBERS:
                    self.subscribers[identity] = Subscriber(
                        identity, name, prefixes, self.clock(), batched=batched
                    )
                    self._fanout = tuple(self.subscribers.values())
                    log.info(f"bus: subscriber {name} joined")
                else:
                    log.warning(f"bus: {MAX_SUBSCRIBERS} subscribers already; {name} refused")

    def _read_events(self, sock: zmq.Socket[Any], name: str) -> None:
        for _ in range(1000):  # then let subscriptions and flushes have their turn
            # Copied out, as bytes: for messages of a few KB that is cheaper than zero-copy
            # frames, and a queued frame would pin ZeroMQ's whole 8 KB receive buffer.
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            count = self._count(frames, "a worker")
            if not count:
                continue
            if self.links:  # other hosts get it as it is: each runs its own cut-over
                tag = self._tags[name]
                self._fan_out([*frames, tag] if tag else frames, tuple(self.links.values()), count)
            cutover = self.cutover
            if cutover is None and name != self._retired:
                self._fan_out(frames, self._fanout, count)
            else:
                for message in unpack_batch(frames[1]) if frames[0] == BATCH else [frames]:
                    if cutover is None:  # a retired generation: its own events only
                        if is_dispatch(message):
                            self.other_generation += 1
                        else:
                            self._fan_out(message, self._fanout)
                    elif name == self._cutover_old:
                        if cutover.old(message):
                            self._fan_out(message, self._fanout)
                    else:
                        for out in cutover.new(message):
                            self._fan_out(out, self._fanout)
            self.received += count  # counted once handed out: a reader sees every drop made

    # -- a reshard's cut-over (the supervisor's thread asks, the bus thread does) -----------

    def reshard(
        self,
        action: str,
        old_input: str = "",
        limit_bytes: int = 0,
        tags: tuple[bytes, bytes] = (b"", b""),
    ) -> threading.Event:
        """``begin`` (the generation on ``old_input`` is replaced; the other input's
        dispatches are staged, up to ``limit_bytes``; in a fleet, ``tags`` name the old and
        the new generation on the wire between hosts), ``switch`` (applications get the new
        generation from now on), ``abort`` (the new generation's dispatches are dropped from
        now on), ``finish`` (one generation again). The event is set once the bus did it."""
        return self._ask(action, (old_input, limit_bytes, tags))

    def set_generation(self, tag: bytes) -> threading.Event:
        """In a fleet: the generation the shards on input "a" belong to (the fleet's first
        is ``b""``), as this host starts."""
        return self._ask("generation", tag)

    @property
    def cutover_overflowed(self) -> bool:
        cutover = self.cutover
        return cutover is not None and cutover.overflowed

    def _apply_actions(self) -> None:
        while True:  # the wake-ups (one per ask, or fewer)
            try:
                self._wake_in.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        with self._lock:
            actions, self._actions = self._actions, []
        for action, payload, done in actions:
            if action == "peers":
                self._apply_links(payload)
            elif action == "generation":
                self._tags["a"] = self._current = payload
            elif action == "begin":
                old_input, limit_bytes, (old_tag, new_tag) = payload
                self.cutover = CutOver(limit_bytes)
                self._cutover_old = old_input
                self._cutover_new = "b" if old_input == "a" else "a"
                self._retired = ""  # the new generation starts on it
                self._tags[old_input], self._tags[self._cutover_new] = old_tag, new_tag
                self._current = old_tag
            elif action == "switch" and self.cutover is not None:
                for frames in self.cutover.switch():
                    self._fan_out(frames, self._fanout)
            elif action == "abort" and self.cutover is not None:
                self.cutover.abort()
            elif action == "finish" and self.cutover is not None:
                if self.cutover.switched:
                    self._current = self._tags[self._cutover_new]
                    self._retired = self._cutover_old
                else:
                    self._retired = self._cutover_new
                self.cutover = None
            done.set()

    def _fan_out(
        self, frames: list[Any], subscribers: tuple[Subscriber, ...], count: int = 1
    ) -> None:
        """Offer a message (``count`` events: a batch, or one) to each subscriber that wants
        any of it: a batch as it is to one that takes batches and wants all of it, else the
        part it wants."""
        if frames[0] == BATCH:
            self._fan_out_batch(frames, subscribers, count)
            return
        topic = frames[0]
        for sub in subscribers:
            if topic.startswith(sub.prefixes):
                self._offer(sub, frames, 1)

    def _fan_out_batch(
        self, frames: list[Any], subscribers: tuple[Subscriber, ...], count: int
    ) -> None:
        topics: list[bytes] | None = None
        messages: list[list[bytes]] | None = None
        tag = frames[2:]  # to another host: the generation's tag, on each part of it too
        for sub in subscribers:
            if sub.batched and sub.prefixes is _EVERYTHING:
                self._offer(sub, frames, count)
                continue
            if topics is None:
                topics = batch_topics(frames[1])
            wanted = [n for n, topic in enumerate(topics) if topic.startswith(sub.prefixes)]
            if sub.batched and len(wanted) == count:
                self._offer(sub, frames, count)
                continue
            if not wanted:
                continue
            if messages is None:
                messages = unpack_batch(frames[1])
            if sub.batched and len(wanted) > 1:
                parts = [frame for n in wanted for frame in messages[n]]
                self._offer(sub, [BATCH, pack_batch(parts), *tag], len(wanted))
                continue
            for n in wanted:
                self._offer(sub, [*messages[n], *tag] if tag else messages[n], 1)

    def _offer(self, sub: Subscriber, frames: list[Any], count: int) -> None:
        if sub.queue:
            self._flush(sub)  # what waits goes first: order is kept
        if not sub.queue and not sub.unreported and self._send(sub, frames, count):
            return  # the usual case: straight through
        self._enqueue(sub, frames, count)

    def _enqueue(self, sub: Subscriber, frames: list[Any], count: int) -> None:
        size = sum(len(f) for f in frames) + MESSAGE_OVERHEAD * count
        if sub.queued_bytes + size > self.buffer_bytes:
            sub.dropped += count
            sub.unreported += count
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
            if sub.link is None:
                why = (
                    f"{sub.unreported} events were dropped for this subscriber: its "
                    "buffer in the supervisor (bus.subscriber_buffer_bytes) was full"
                )
            else:
                why = (
                    f"{sub.unreported} events of host {self.host} were dropped on their way "
                    f"to this host: the link's buffer (bus.subscriber_buffer_bytes) was full"
                )
            notice = encode_bus_event(
                EventsDropped(message=why, source="supervisor", dropped=sub.unreported),
                "supervisor",
                time.time_ns(),
            )
            sub.unreported = 0
            sub.queue.append((notice, 0))  # (not an event the subscriber gets counted for)
            sub.queued_bytes += sum(len(f) for f in notice) + MESSAGE_OVERHEAD
        sub.queue.append((frames, count))
        sub.queued_bytes += size
        sub.backlog_peak = max(sub.backlog_peak, sub.queued_bytes)

    def _send(self, sub: Subscriber, frames: list[Any], count: int) -> bool:
        """True when ZeroMQ took the message (``count`` events); False when the
        subscriber's pipe is full. A subscriber that is gone is forgotten."""
        if sub.link is not None:
            return self._send_link(sub, frames, count)
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
        sub.delivered += count
        self._took_at = self.clock()
        return True

    def _send_link(self, sub: Subscriber, frames: list[Any], count: int) -> bool:
        link = sub.link
        last = len(frames) - 1
        try:  # the first frame decides, as for the ROUTER
            _raw_send(link, frames[0], _NOBLOCK if last == 0 else _MORE_NOBLOCK)
        except zmq.Again:
            return False
        for n in range(1, last + 1):
            _raw_send(link, frames[n], _NOBLOCK if n == last else _MORE_NOBLOCK)
        sub.delivered += count
        self._took_at = self.clock()
        return True

    def _flush_all(self) -> None:
        for sub in self._fanout:
            self._flush(sub)
        for sub in tuple(self.links.values()):
            self._flush(sub)

    def _flush(self, sub: Subscriber) -> None:
        """Send what waits for ``sub``, oldest first, until its pipe is full."""
        if sub.queue:
            while sub.queue:
                frames, count = sub.queue[0]
                if not self._send(sub, frames, count):
                    break
                if sub.link is None and sub.identity not in self.subscribers:
                    break
                sub.queue.popleft()
                sub.queued_bytes -= sum(len(f) for f in frames) + MESSAGE_OVERHEAD * max(count, 1)
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
