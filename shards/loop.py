"""The shard's one loop: it owns the websocket and is its only writer.

Everything that can change the connection arrives through one inbox (frames from the
transport, the close notice, commands, identify permits, stop) and is handed to the sans-I/O
:class:`~shards.protocol.GatewayProtocol`; the actions it returns are performed here, in
order. The heartbeat is a deadline of this loop, not a task, so a heartbeat-driven reconnect
can never race a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from conn.inbox import Inbox
from conn.websocket import ClosedInfo, TransportError, WebSocketTransport
from ipc.codec import CodecError
from ipc.control import (
    GatewayForward,
    IdentifyPermit,
    IdentifyRequest,
    IdentifySent,
    ResumePermit,
    ResumeRequest,
    ShardStatus,
    Shutdown,
)
from ipc.errors import ErrorEvent, FatalClose
from ipc.eventloop import trim_memory
from ipc.links import ControlLink, NullPublisher
from ipc.messages import Command, GatewayCommand
from shards.protocol import (
    Action,
    Checkpoint,
    Close,
    Emit,
    Forward,
    GatewayProtocol,
    Publish,
    RequestPermit,
    RequestResume,
    Send,
    ShardSettings,
    ShardState,
)

__all__ = ["LocalIdentifyBucket", "ShardRunner"]

log = logging.getLogger("shardline.shard")

IDENTIFY_INTERVAL = 5.0  # seconds between identifies of one bucket (Discord's rule)
# Dispatches go to the bus in batches, one per read of the gateway (ipc/links.py). When the
# bus does not take a batch (its queue is full), the shard holds it and what follows, in
# order, and stops reading the gateway: the burst waits in Discord's TCP stream, not in
# memory. It retries every HOLD_RETRY seconds; when the bus took none for HOLD_LIMIT
# it drops what it holds (counted, as before) and reads on, so that heartbeat ACKs keep
# arriving and a stuck bus never costs the session.
HOLD_RETRY = 0.001
HOLD_LIMIT = 2.0
# Gateway bytes read but not yet handled, past which reading pauses until the loop has
# handled them: the event loop may read many times before the shard's turn (libuv reads
# while data keeps coming), and a burst would otherwise pile up here.
INBOX_LIMIT = 1 << 18


class _ResumePermit:
    """The supervisor's word: RESUME."""


class _Permit:
    __slots__ = ()


class _Stop:
    __slots__ = ()


class _Wake:
    __slots__ = ()


class _Closed:
    __slots__ = ("info", "transport")

    def __init__(self, transport: WebSocketTransport, info: ClosedInfo) -> None:
        self.transport = transport
        self.info = info


class LocalIdentifyBucket:
    """Standalone mode (no supervisor): at most one identify per ``interval`` seconds."""

    def __init__(self, interval: float = IDENTIFY_INTERVAL) -> None:
        self.interval = interval
        self.last: float | None = None

    def grant_at(self, now: float) -> float:
        at = now if self.last is None else max(now, self.last + self.interval)
        self.last = at
        return at


class ShardRunner:
    """Runs one shard until it is stopped or a fatal close code ends it."""

    def __init__(
        self,
        settings: ShardSettings,
        gateway_url: str,
        *,
        publisher: NullPublisher | None = None,
        control: ControlLink | None = None,
        ssl_context: ssl.SSLContext | None = None,
        status_interval: float = 1.0,
        identify_bucket: LocalIdentifyBucket | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.protocol = GatewayProtocol(settings)
        self.settings = settings
        self.gateway_url = gateway_url
        self.publisher = publisher or NullPublisher(f"shard:{settings.shard_id}")
        self.control = control
        self.ssl_context = ssl_context
        self.status_interval = status_interval
        self.bucket = identify_bucket or LocalIdentifyBucket()
        self.clock = clock
        self.ws: WebSocketTransport | None = None
        self.inbox: Inbox[Any] = Inbox(clock)
        self._timer: asyncio.TimerHandle | None = None
        self._next_status = 0.0
        self._reported_state: ShardState | None = None  # in the last status sent
        self._reported_pending = 0  # guilds READY listed still to come, in the last status
        self._rate_mark = (0.0, 0)
        self.dispatch_rate = 0.0
        self._stopping = False
        self._stop_deadline = 0.0
        self._next_trim = 0.0
        self._dispatches_at_trim = 0
        self._quiet_ticks = 0
        self.errors: list[ErrorEvent] = []  # recent error events, for tests and status
        # Dispatches (and the checkpoints after them) the bus did not take yet, in order,
        # after the publisher's pending batch; and since when the bus took nothing (None:
        # not holding). The gateway is not read meanwhile (HOLD_LIMIT above).
        self._held: deque[Publish | Checkpoint] = deque()
        self._holding_since: float | None = None
        self._unread = 0  # bytes of gateway messages in the inbox (INBOX_LIMIT)
        self._reading_paused = False
        self.on_status: Callable[[dict[str, Any]], None] | None = None

    # -- the inbox: everything enters here ------------------------------------------------

    def _put(self, item: Any) -> None:
        self.inbox.put(item)

    def submit(self, command: GatewayCommand) -> None:
        """Queue a command for the gateway (thread: the loop's own)."""
        self._put(command)

    def grant_permit(self) -> None:
        self._put(_Permit())

    def grant_resume(self) -> None:
        self._put(_ResumePermit())

    def stop(self) -> None:
        """Close resumably, checkpoint, and return from :meth:`run`."""
        self._put(_Stop())

    def wake(self) -> None:
        """Make the loop read its clock again now: a test that drives ``clock`` calls this
        after moving it, instead of waiting for a real timer."""
        self._put(_Wake())

    def _on_message(self, message: bytes | str) -> None:
        self.inbox.put(message)
        self._unread += len(message)
        if self._unread > INBOX_LIMIT and not self._reading_paused and self.ws is not None:
            self._reading_paused = True
            self.ws.pause_reading()

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> ShardState:
        """Returns the final state: ``stopped`` or ``fatal``."""
        control_task = None
        if self.control is not None:
            self.control.hello("shard", str(self.settings.shard_id))
            control_task = asyncio.get_running_loop().create_task(self._read_control())
        try:
            await self._spin()
        finally:
            if control_task is not None:
                control_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await control_task
            if self.ws is not None:
                self.ws.abort()
            self._send_status()
        return self.protocol.state

    async def _spin(self) -> None:
        proto = self.protocol
        while True:
            now = self.clock()
            if proto.state in (ShardState.FATAL, ShardState.STOPPED):
                if self._holding_since is not None:  # what the bus has yet to take
                    self._flush_held()  # (the final checkpoint with it)
                holding = self._holding_since is not None
                # Let a closing connection finish its close handshake, briefly.
                if (self.ws is None and not holding) or now >= self._stop_deadline:
                    return
                wake = self._stop_deadline
                if holding:
                    wake = min(wake, now + HOLD_RETRY)
                await self._wait(wake)
                self._drain_inbox()
                continue
            if self.ws is None and not self._stopping:
                if proto.state is ShardState.BACKING_OFF and proto.reconnect_at is not None:
                    if now < proto.reconnect_at:
                        await self._wait(proto.reconnect_at)
                        self._drain_inbox()
                        continue
                await self._open()
                continue
            deadline = proto.next_deadline()
            if self._holding_since is not None:  # retry the bus soon
                retry = now + HOLD_RETRY
                deadline = retry if deadline is None else min(deadline, retry)
            await self._wait(deadline)
            if self._holding_since is not None:
                self._flush_held()
            self._drain_inbox()
            if self.ws is not None:
                self._execute(proto.poll(self.clock()))

    async def _open(self) -> None:
        proto = self.protocol
        now = self.clock()
        proto.on_connecting(now)
        url = proto.connect_url(self.gateway_url)
        log.info(
            "connecting", extra={"fields": {"url": url.split("?")[0], "resume": proto.resumable}}
        )
        try:
            ws = await WebSocketTransport.connect(
                url,
                self._on_message,
                self._on_transport_closed,
                ssl_context=self.ssl_context,
                max_message=self.settings.max_payload_bytes,
            )
        except TransportError as exc:
            self._execute(proto.on_connect_failed(self.clock(), str(exc)))
            return
        self.ws = ws
        if self._holding_since is not None:  # the bus is still behind: this one waits too
            ws.pause_reading()
        proto.on_connected(self.clock())

    def _on_transport_closed(self, transport: WebSocketTransport, info: ClosedInfo) -> None:
        self._put(_Closed(transport, info))

    async def _wait(self, until: float | None) -> None:
        """Sleep until ``until`` (monotonic), the status tick, or anything in the inbox."""
        if self.inbox:
            return
        now = self.clock()
        # Every second, and at once when the state changed (READY shows when it happens) or
        # the last guild READY listed arrived (a reshard waits for exactly that)
        proto = self.protocol
        if (
            self._next_status <= now
            or proto.state is not self._reported_state
            or (self._reported_pending and not proto.pending_guilds)
        ):
            self._send_status()
            self._next_status = now + self.status_interval
        await self.inbox.wait(self._next_status if until is None else min(until, self._next_status))

    def _drain_inbox(self) -> None:
        proto = self.protocol
        inbox = self.inbox
        while inbox:
            item = inbox.take()
            if item.__class__ is bytes or item.__class__ is str:
                self._unread -= len(item)
                if self.ws is not None:
                    self._execute(proto.receive(item, self.clock()))
            elif isinstance(item, GatewayCommand):
                self._execute(proto.submit(item, self.clock()))
            elif isinstance(item, _Closed):
                if item.transport is not self.ws:
                    continue  # a connection that never opened, already accounted for
                self.ws = None
                info = item.info
                log.info(
                    "connection closed",
                    extra={"fields": {"code": info.code, "reason": info.reason}},
                )
                self._execute(proto.on_closed(info.code, info.reason, self.clock(), info.handshake))
            elif isinstance(item, _Permit):
                self._execute(proto.on_permit(self.clock()))
            elif isinstance(item, _ResumePermit):
                self._execute(proto.on_resume_permit(self.clock()))
            elif isinstance(item, _Stop):
                self._begin_stop()
        if self._holding_since is None and not self.publisher.flush():
            self._begin_hold()  # the batch of this read waits for the bus
        if self._reading_paused:
            self._reading_paused = False
            self._unread = 0  # (a closed connection's frames are not counted on)
            if self.ws is not None and self._holding_since is None:  # a full bus keeps it paused
                self.ws.resume_reading()

    def _begin_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._stop_deadline = self.clock() + 5.0
        log.info("stopping: closing resumably after a final checkpoint")
        self._execute(self.protocol.stop())

    # -- actions --------------------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            # Exact class checks, Publish first: this runs for every dispatch, and isinstance
            # on a union costs more than the rest of the publish. (mypy cannot narrow on it.)
            cls = action.__class__
            if cls is Publish:
                if self._held or not self.publisher.dispatch(
                    action.t,  # type: ignore[union-attr]
                    action.raw,  # type: ignore[union-attr]
                    action.seq,  # type: ignore[union-attr]
                    self.protocol.session_id,
                ):
                    self._hold(action)  # type: ignore[arg-type]
            elif cls is Checkpoint and (self._held or not self.publisher.flush()):
                self._hold(action)  # type: ignore[arg-type]  # after what it covers
            elif cls is Send:
                self._send(action)  # type: ignore[arg-type]
            elif cls is Emit:
                self._emit(action.event)  # type: ignore[union-attr]
            elif cls is Close:
                if self.ws is not None:
                    self.ws.close(action.code, action.reason)  # type: ignore[union-attr]
            elif cls is Checkpoint:
                self._checkpoint(action)  # type: ignore[arg-type]
            elif cls is RequestPermit:
                self._request_permit()
            elif cls is RequestResume:
                if self.control is not None:
                    self.control.send(ResumeRequest(shard=self.settings.shard_id))
                else:  # standalone: nobody to ask
                    self.grant_resume()
            elif cls is Forward:
                self._forward(action)  # type: ignore[arg-type]

    def _begin_hold(self) -> None:
        """The bus is full: stop reading the gateway until it takes what waits."""
        if self._holding_since is None:
            self._holding_since = self.clock()
            if self.ws is not None:
                self.ws.pause_reading()

    def _hold(self, action: Publish | Checkpoint) -> None:
        """Keep ``action`` (and what follows) until the bus takes what waits before it."""
        self._begin_hold()
        self._held.append(action)

    def _flush_held(self) -> None:
        """Publish the pending batch and what is held, in order, as the bus takes them; read
        again once it all went. When the bus took none for HOLD_LIMIT: drop the rest
        (counted) rather than starve the heartbeat."""
        held, publisher, session = self._held, self.publisher, self.protocol.session_id
        published = publisher.published
        if publisher.flush():
            while held:
                action = held[0]
                if action.__class__ is Checkpoint:
                    if not publisher.flush():  # it goes only after the dispatches it covers
                        break
                    self._checkpoint(action)
                elif not publisher.dispatch(action.t, action.raw, action.seq, session):  # type: ignore[union-attr]
                    break
                held.popleft()
            publisher.flush()  # the last batch (refused: it waits, still held)
        now = self.clock()
        if publisher.published != published:
            self._holding_since = now  # the bus takes them: the limit counts from its last take
        elif (held or publisher.pending) and now - (self._holding_since or now) >= HOLD_LIMIT:
            held_dispatches = sum(1 for a in held if a.__class__ is Publish)
            publisher.dropped += held_dispatches
            dropped = publisher.discard() + held_dispatches
            log.warning(
                f"the bus took no event for {HOLD_LIMIT:.0f}s: {dropped} dropped (counted); "
                "reading the gateway again",
                extra={"fields": {"dropped": dropped}},
            )
            for action in held:
                if action.__class__ is Checkpoint:
                    self._checkpoint(action)
            held.clear()
        if not held and not publisher.pending:
            self._holding_since = None
            if self.ws is not None:
                self.ws.resume_reading()

    def _send(self, action: Send) -> None:
        ws = self.ws
        if ws is None or not ws.open:
            self.protocol.on_send_failed(action)
            return
        try:
            ws.send(action.data)
        except ConnectionError:
            self.protocol.on_send_failed(action)
            return
        self.protocol.on_sent(action)
        if action.kind == "identify" and self.control is not None:
            self.control.send(IdentifySent(shard=self.settings.shard_id))

    def _emit(self, event: ErrorEvent) -> None:
        self.errors.append(event)
        del self.errors[:-100]
        level = logging.ERROR if isinstance(event, FatalClose) else logging.WARNING
        log.log(level, event.message, extra={"fields": {"event": event.type_name}})
        self.publisher.event(event)
        if level == logging.ERROR and self.control is not None:
            self.control.send(event)  # the supervisor stops the fleet with this advice

    def _checkpoint(self, action: Checkpoint) -> None:
        checkpoint = action.to_event()
        self.publisher.event(checkpoint)  # in order with the dispatches it covers
        if self.control is not None:
            self.control.send(checkpoint)

    def _request_permit(self) -> None:
        if self.control is not None:
            self.control.send(IdentifyRequest(shard=self.settings.shard_id))
            return
        now = self.clock()
        at = self.bucket.grant_at(now)
        asyncio.get_running_loop().call_later(max(0.0, at - now), self.grant_permit)

    def _forward(self, action: Forward) -> None:
        if self.control is not None:
            self.control.send(
                GatewayForward(
                    shard=self.settings.shard_id, t=action.t, payload=action.raw.decode()
                )
            )

    # -- periodic status and the checkpoint that rides with it ----------------------------

    def _send_status(self) -> None:
        proto = self.protocol
        now = self.clock()
        mark_time, mark_count = self._rate_mark
        if now - mark_time >= 0.5:  # a status sent early for a state change keeps the rate
            if mark_time:
                self.dispatch_rate = (proto.dispatches - mark_count) / (now - mark_time)
            self._rate_mark = (now, proto.dispatches)
        # After a burst has passed and the shard has been quiet for a while, give the burst's
        # memory back. Trimming costs the loop some milliseconds, so never while traffic flows.
        self._quiet_ticks = self._quiet_ticks + 1 if self.dispatch_rate < 50 else 0
        if self._quiet_ticks >= 5 and proto.dispatches != self._dispatches_at_trim:
            if now >= self._next_trim or proto.dispatches - self._dispatches_at_trim >= 10:
                self._next_trim = now + 60.0
                self._dispatches_at_trim = proto.dispatches
                trim_memory()  # a thousand idle shards must not keep their busiest minute
        self._reported_state = proto.state
        self._reported_pending = len(proto.pending_guilds)
        status = proto.status()
        status.update(
            dispatch_rate=round(self.dispatch_rate, 1),
            dropped=self.publisher.dropped,
        )
        if self.on_status is not None:
            self.on_status(status)
        if proto.resumable and proto.state is ShardState.READY:
            self._checkpoint(proto.checkpoint())
        if self.control is not None:
            self.control.send(
                ShardStatus(
                    shard=status["shard"],
                    state=status["state"],
                    latency_ms=status["latency_ms"],
                    seq=status["seq"],
                    session=status["session"],
                    guilds=status["guilds"],
                    guilds_pending=status["guilds_pending"],
                    dispatch_rate=status["dispatch_rate"],
                    reconnects=status["reconnects"],
                    dropped=status["dropped"],
                    queued_commands=status["queued_commands"],
                    dispatch_types=status["dispatch_types"],
                    identifies=status["identifies"],
                    resumes=status["resumes"],
                    invalid_sessions=status["invalid_sessions"],
                    heartbeat_acks=status["heartbeat_acks"],
                    closes=status["closes"],
                )
            )

    # -- commands from the supervisor -----------------------------------------------------

    async def _read_control(self) -> None:
        assert self.control is not None
        while True:
            try:
                command: Command = await self.control.receive()
            except CodecError as exc:
                log.warning("bad control message", extra={"fields": {"error": str(exc)}})
                continue
            if isinstance(command, IdentifyPermit):
                self.grant_permit()
            elif isinstance(command, ResumePermit):
                self.grant_resume()
            elif isinstance(command, Shutdown):
                self.stop()
            elif isinstance(command, GatewayCommand):
                self.submit(command)
            else:
                log.warning(
                    "unexpected control command", extra={"fields": {"type": command.type_name}}
                )
