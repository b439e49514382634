"""A guild's voice connection as one loop: voice websocket, UDP socket, heartbeat and the 20 ms
send clock, all driven from one place. The library face of the voice worker:

    session = VoiceSession(credentials, ssl_context=...)
    await session.connect()          # identify, discovery, select protocol: ready to speak
    await session.play(PCMSource(open("clip.pcm", "rb")))
    await session.leave()

DAVE (end-to-end encryption) runs in :class:`voiceworker.dave.DaveDriver`: Opus frames are
encrypted end to end before transport encryption once the call's MLS group is formed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conn.backoff import backoff_delay
from conn.inbox import Inbox
from conn.websocket import ClosedInfo, WebSocketTransport
from ipc.states import VoiceOutcome
from voiceworker.audio import SILENCE, AudioSource
from voiceworker.clock import SendClock
from voiceworker.crypto import MODES, DecryptError, TransportCipher
from voiceworker.dave import MAX_VERSION, DaveDriver
from voiceworker.discovery import DISCOVERY_SIZE, DiscoveryError, build_request, parse_response
from voiceworker.gateway import (
    Close,
    Connected,
    DaveMessage,
    Discover,
    Failed,
    Resumed,
    SendBinary,
    SendText,
    Speaking,
    VoiceAction,
    VoiceCredentials,
    VoiceGateway,
    VoiceState,
    Warn,
)
from voiceworker.rtp import RtpPacketizer
from voiceworker.transmitter import (
    SendFrame,
    SetSpeaking,
    SkipFrames,
    TrackDone,
    Transmitter,
    TxAction,
)

__all__ = ["VoiceError", "VoiceSession"]

log = logging.getLogger("shardline.voice")

PRECISE_STRETCH = 0.002  # with ``precise``: the last 2 ms before a frame are slept exactly
MAX_RECONNECTS = 5  # reconnects in a row without a stable connection, then the session ends
STABLE_AFTER = 60.0  # seconds connected after which the reconnect count starts again
DISCOVERY_ATTEMPTS = 5  # IP discovery requests before giving up
DISCOVERY_RETRY = 1.0  # seconds between them


class VoiceError(RuntimeError):
    """The voice connection failed; the message says why."""


# -- what arrives in the loop's inbox (besides websocket messages, which are bytes or str) ---


@dataclass(slots=True)
class _Datagram:
    data: bytes


@dataclass(slots=True)
class _Opened:
    transport: WebSocketTransport
    early: list[bytes | str]  # what arrived before the handshake's await returned


@dataclass(slots=True)
class _OpenFailed:
    error: str


@dataclass(slots=True)
class _Closed:
    transport: WebSocketTransport
    info: ClosedInfo


@dataclass(slots=True)
class _Play:
    source: AudioSource
    done: asyncio.Future[int]


@dataclass(slots=True)
class _StopPlaying:
    source: AudioSource | None  # None: whatever plays


@dataclass(slots=True)
class _Pause:
    pass


@dataclass(slots=True)
class _Resume:
    pass


@dataclass(slots=True)
class _Volume:
    volume: float


@dataclass(slots=True)
class _Discovery:
    """UDP IP discovery under way: a request every second, five at most."""

    action: Discover
    sent: int = 0
    retry_at: float = 0.0


class _UdpSocket:
    """A connected, non-blocking UDP socket read by the loop's reader callback: every
    datagram goes to the inbox, and sends never wait (a full buffer drops the packet)."""

    def __init__(self, address: tuple[str, int], inbox: Inbox[Any]) -> None:
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.inbox = inbox
        self.dropped = 0
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        # One datagram per wakeup, as asyncio's own datagram transport reads: the websocket
        # gets its turn in between, so a SPEAKING sent before a member's audio is read first.
        try:
            data = self.sock.recv(65536)
        except OSError:
            return  # nothing after all, or ICMP unreachable: the keepalive check notices
        self.inbox.put(_Datagram(data))

    def sendto(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError:  # a full buffer (EAGAIN) or a refused port: this packet is lost
            self.dropped += 1

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


class VoiceSession:
    def __init__(
        self,
        credentials: VoiceCredentials,
        *,
        ssl_context: ssl.SSLContext | None = None,
        modes: tuple[str, ...] = MODES,
        keepalive_interval: float = 5.0,
        udp_silence_limit: int = 12,
        precise: bool = False,
    ) -> None:
        self.gateway = VoiceGateway(credentials, max_dave_protocol_version=MAX_VERSION)
        self.dave = DaveDriver(credentials.user_id, credentials.channel_id)
        self.ssl_context = ssl_context
        self.modes = modes
        self.inbox: Inbox[Any] = Inbox()
        self.ws: WebSocketTransport | None = None
        self.udp: _UdpSocket | None = None
        self.cipher: TransportCipher | None = None
        self.rtp: RtpPacketizer | None = None
        self.tx = Transmitter()
        self.connected = asyncio.Event()
        self.failure: Failed | None = None
        self.packets_sent = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._reconnect_at: float | None = None
        self._attempt = 0
        self._discovery: _Discovery | None = None
        self._other_at: float | None = None  # the earliest deadline besides the frame's
        self._changed = True  # _other_at must be computed again
        self._connected_at: float | None = None
        self._plays: dict[int, asyncio.Future[int]] = {}  # id(source) -> play()'s result
        self.warnings = 0
        self.keepalive_interval = keepalive_interval
        # The voice process owns its loop: it may sleep the last stretch before each frame
        # exactly (blocking), which a library user sharing a loop may not want.
        self.precise = precise
        self._next_keepalive: float | None = None
        self._keepalives = 0
        # Discord echoes UDP keepalives: once it has, this many unanswered in a row means
        # UDP is gone (discord.js's limit: 12, a minute at 5 s), and we identify again.
        self.udp_silence_limit = udp_silence_limit
        self._keepalive_echoed = 0  # the last keepalive counter the server echoed
        self.udp_reconnects = 0
        self.ended = asyncio.Event()
        self.volume = 1.0
        # Receiving: set on_audio(user_id, opus_frame) to hear the other members.
        self.on_audio: Callable[[int, bytes], None] | None = None
        self.ssrc_users: dict[int, int] = {}
        self.undecryptable = 0

    # -- the library face: each call is an inbox item for the loop ------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        """Open the voice connection and wait until audio may flow."""
        self._loop_task = asyncio.get_running_loop().create_task(self._run_and_mark())
        waiter = asyncio.ensure_future(self.connected.wait())
        done, _ = await asyncio.wait(
            {waiter, self._loop_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            why = self.failure.message if self.failure else "timed out"
            await self.leave()
            raise VoiceError(f"voice connection failed: {why}")

    @property
    def clock(self) -> SendClock | None:
        """The send clock of the current (or last) track: its lateness is the jitter."""
        return self.tx.clock

    @property
    def current(self) -> AudioSource | None:
        return self.tx.source

    async def play(self, source: AudioSource) -> int:
        """Play ``source`` on the loop's 20 ms clock (replacing what plays), and return the
        frames sent, silence included, when it ends. Cancelling stops it. Raises
        :class:`VoiceError` when the session is not connected, or is left meanwhile, and
        ValueError when the source cannot be read (ffmpeg failed)."""
        if not self.connected.is_set() or self.ws is None:
            raise VoiceError("not connected")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.inbox.put(_Play(source, done))
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            if not done.cancelled():  # we were cancelled, not the track
                self.inbox.put(_StopPlaying(source))
            raise

    def stop_playing(self) -> None:
        self.inbox.put(_StopPlaying(None))

    def pause(self) -> None:
        """Stop sending after the current frame (with five silence frames)."""
        self.inbox.put(_Pause())

    def resume(self) -> None:
        self.inbox.put(_Resume())

    @property
    def paused(self) -> bool:
        return self.tx.paused

    def set_volume(self, volume: float) -> None:
        """Scale what is playing (and what plays next) by ``volume`` (1.0 = as is)."""
        self.inbox.put(_Volume(max(0.0, volume)))

    async def move(self, token: str, endpoint: str) -> None:
        """A new VOICE_SERVER_UPDATE (a region move): connect to the new server afresh."""
        await self.leave()
        self.gateway.new_server(token, endpoint)
        self.dave.forget_call()
        self.inbox = Inbox()
        self.connected.clear()
        self.cipher = self.rtp = self.udp = self.ws = None
        self.failure = None
        self._attempt = 0
        self._reconnect_at = None
        await self.connect()

    async def leave(self) -> None:
        """Close the connection. The loop is stopped first, so that it does not read its own
        close as the connection ending by itself."""
        for task in (self._opening, self._loop_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._opening = None
        self._finish_tracks(VoiceError("the voice session was left"))
        if self.ws is not None:
            self.ws.close(1000, "leaving")
        if self.udp is not None:
            self.udp.close()
        self._discovery = None

    # -- the loop -------------------------------------------------------------------------

    async def _run_and_mark(self) -> None:
        """The loop, and what ends it: whatever the reason (a crash included) the session is
        no longer reported connected, and ``failure`` says why."""
        try:
            await self._run()
        except asyncio.CancelledError:
            raise  # leave or move: not an end by itself
        except Exception as exc:
            log.exception("voice session loop crashed")
            self._fail(Failed(None, VoiceOutcome.STOP, f"voice session crashed: {exc!r}"))
        self.connected.clear()
        self._finish_tracks(VoiceError(self.failure.message if self.failure else "ended"))
        self.ended.set()  # ended by itself (not cancelled by leave or move): failure says why

    def _fail(self, failure: Failed) -> None:
        """Keep the first cause: the closes and timeouts it leads to only follow from it."""
        log.warning(failure.message)
        if self.failure is None:
            self.failure = failure

    async def _run(self) -> None:
        """The one loop: websocket messages and closes, UDP datagrams, the library's calls,
        and the deadlines (heartbeat, UDP keepalive, reconnect, discovery retry, the next
        frame) all pass through here; nothing else writes to the sockets. A close the
        gateway says to resume after reconnects (with backoff) and RESUMEs, keeping UDP and
        keys while frames keep going out; anything else ends the loop with ``failure``
        saying why."""
        self._open()
        inbox = self.inbox
        tx = self.tx
        self._changed = True
        while True:
            if self._changed:  # something may have moved a deadline other than the frame's
                self._changed = False
                self._other_at = self._other_deadline()
            frame_at = tx.next_at
            other_at = self._other_at
            until = frame_at
            if other_at is not None and (frame_at is None or other_at < frame_at):
                until = other_at
            await self._wait(until, frame_at)
            if inbox:
                self._changed = True
                while inbox:
                    if self._handle(inbox.take()):
                        return
            self._tick(time.monotonic())

    def _other_deadline(self) -> float | None:
        """The earliest deadline besides the next frame's: heartbeat, UDP keepalive,
        reconnect, discovery retry. Kept between frames (recomputed only when something
        that moves one happened), so a frame's turn of the loop only compares two times:
        with fifty sessions sharing two cores, every call on the per-frame path is paid
        cold, fifty times a frame period."""
        soonest: float | None = None
        discovery = self._discovery
        for at in (
            self.gateway.next_deadline(),
            self._next_keepalive,
            self._reconnect_at,
            None if discovery is None else discovery.retry_at,
        ):
            if at is not None and (soonest is None or at < soonest):
                soonest = at
        return soonest

    async def _wait(self, until: float | None, frame_at: float | None) -> None:
        """Sleep on the inbox until ``until``. In ``precise`` mode the last 2 ms before a
        frame are slept exactly (loop timers wake up to 1 ms late)."""
        if not self.precise or frame_at is None or until is None or frame_at > until:
            await self.inbox.wait(until)
            return
        await self.inbox.wait(frame_at - PRECISE_STRETCH)
        if not self.inbox:
            delay = frame_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # to the microsecond, for the frame that is due

    def _handle(self, item: Any) -> bool:
        """One inbox item; True when the session has ended."""
        gw = self.gateway
        now = time.monotonic()
        cls = item.__class__
        if cls is _Datagram:
            self._on_udp(item.data)
        elif cls is bytes or cls is str:
            if self.ws is not None:
                self._act(gw.receive(item, now))
        elif cls is _Play:
            self._plays[id(item.source)] = item.done
            self._act_tx(self.tx.play(item.source, now))
        elif cls is _StopPlaying:
            if item.source is None or item.source is self.tx.source:
                self._act_tx(self.tx.stop())
        elif cls is _Pause:
            self.tx.pause()
        elif cls is _Resume:
            self._act_tx(self.tx.resume(now))
        elif cls is _Volume:
            self.volume = item.volume
            current = self.tx.source
            if current is not None and hasattr(current, "volume"):
                current.volume = self.volume
        elif cls is _Opened:
            self._opening = None
            self.ws = item.transport
            self._act(gw.on_connected(now))
            for message in item.early:
                if self.ws is not None:
                    self._act(gw.receive(message, now))
        elif cls is _OpenFailed:
            self._opening = None
            return self._open_failed(item.error, now)
        elif cls is _Closed:
            if item.transport is not self.ws:
                return False
            self.ws = None
            self._act(gw.on_closed(item.info.code, now))
            return self._after_close(now)
        return False

    def _tick(self, now: float) -> None:
        """The deadlines that have come: the frame's, then (only when the earliest of them
        has come) the others."""
        tx = self.tx
        frame_at = tx.next_at
        if frame_at is not None and now >= frame_at:
            self._act_tx(tx.due(now))
        other_at = self._other_at
        if other_at is None or now < other_at:
            return
        self._changed = True
        if self._reconnect_at is not None and now >= self._reconnect_at:
            self._reconnect_at = None
            self._open()
        discovery = self._discovery
        if discovery is not None and now >= discovery.retry_at:
            self._discover_again(discovery, now)
        self._act(self.gateway.poll(now))
        self._keepalive(now)

    # -- the websocket's life -------------------------------------------------------------

    def _open(self) -> None:
        """Connect the websocket in a task this session owns; the outcome comes back to the
        inbox (the loop keeps sending frames meanwhile)."""
        inbox = self.inbox
        url = self.gateway.credentials.url()
        early: list[bytes | str] | None = []  # until _Opened is in the inbox

        def on_message(message: bytes | str) -> None:
            if early is not None:
                early.append(message)
            else:
                inbox.put(message)

        closed_early: list[_Closed] = []

        def on_closed(transport: WebSocketTransport, info: ClosedInfo) -> None:
            if early is not None:  # before _Opened: it must follow it, not precede it
                closed_early.append(_Closed(transport, info))
            else:
                inbox.put(_Closed(transport, info))

        async def opening() -> None:
            try:
                transport = await WebSocketTransport.connect(
                    url, on_message, on_closed, ssl_context=self.ssl_context
                )
            except OSError as exc:
                inbox.put(_OpenFailed(str(exc)))
                return
            nonlocal early
            inbox.put(_Opened(transport, early or []))
            early = None
            for closed in closed_early:
                inbox.put(closed)

        self._opening = asyncio.get_running_loop().create_task(opening())

    def _open_failed(self, error: str, now: float) -> bool:
        if not self.gateway.resumable or self._attempt >= MAX_RECONNECTS:
            self._fail(Failed(None, VoiceOutcome.REJOIN, f"cannot reach the voice server: {error}"))
            return True
        self._attempt += 1
        self._reconnect_at = now + backoff_delay(self._attempt, 0.25, 5.0)
        return False

    def _after_close(self, now: float) -> bool:
        """The websocket closed and the gateway decided: reconnect (resume) after a
        backoff, or end the session."""
        if self.gateway.state is not VoiceState.BACKING_OFF:
            self.connected.clear()
            return True
        stable = self._connected_at is not None and (now - self._connected_at >= STABLE_AFTER)
        self._connected_at = None
        self._attempt = 1 if stable else self._attempt + 1
        if self._attempt > MAX_RECONNECTS:
            cause = self.failure.message if self.failure else "connection lost"
            self.failure = None
            self._fail(
                Failed(
                    None,
                    VoiceOutcome.REJOIN,
                    f"the voice connection dropped {self._attempt - 1} times in a row without "
                    f"staying up {STABLE_AFTER:.0f}s (first: {cause}); giving it up",
                )
            )
            self.connected.clear()
            return True
        # The first drop after a healthy stretch reconnects at once; then growing waits.
        self._reconnect_at = now + backoff_delay(self._attempt - 1, 0.1, 5.0)
        return False

    # -- what the gateway and the transmitter ask for -------------------------------------

    def _act(self, actions: list[VoiceAction]) -> None:
        self._changed = True  # the gateway's actions may move its deadlines or ours
        for action in actions:
            if isinstance(action, SendText | SendBinary):
                if self.ws is not None and self.ws.open:
                    self.ws.send(action.data, binary=isinstance(action, SendBinary))
            elif isinstance(action, Close):
                if self.ws is not None:
                    self.ws.close(action.code, action.reason)
            elif isinstance(action, Discover):
                self._discover(action)
            elif isinstance(action, Connected):
                self.cipher = TransportCipher(action.mode, action.secret_key)
                self.rtp = RtpPacketizer(action.ssrc)
                self._next_keepalive = time.monotonic() + self.keepalive_interval
                self._connected_at = time.monotonic()
                self.failure = None  # whatever happened before, the session is whole now
                self.connected.set()
                self._act(self.dave.start(action.dave_protocol_version))
            elif isinstance(action, Resumed):
                self._connected_at = time.monotonic()
                self.failure = None
            elif isinstance(action, Failed):
                self._fail(action)
            elif isinstance(action, Warn):
                self._warn(action.message)
            elif isinstance(action, Speaking):
                self.ssrc_users[action.ssrc] = action.user_id
            elif isinstance(action, DaveMessage):
                if action.op == 13:
                    self._forget_member(action.payload)
                self._act(self.dave.receive(action.op, action.payload))

    def _act_tx(self, actions: list[TxAction]) -> None:
        for action in actions:
            if isinstance(action, SendFrame):
                now = time.monotonic()  # the frame leaves now: its lateness is measured
                self._send_audio(action.opus)
                self.tx.sent_at(now)
            elif isinstance(action, SetSpeaking):
                self._act([self.gateway.speaking(1 if action.on else 0)])
            elif isinstance(action, SkipFrames):
                if self.rtp is not None:  # the timestamp keeps counting real time
                    self.rtp.skip(action.frames)
            elif isinstance(action, TrackDone):
                action.source.close()
                done = self._plays.pop(id(action.source), None)
                if done is None or done.done():
                    continue
                if action.error is not None:
                    done.set_exception(ValueError(action.error))
                elif action.stopped:
                    done.cancel()
                else:
                    done.set_result(action.frames)

    def _finish_tracks(self, error: Exception) -> None:
        """The session is over: what plays is closed, and whoever awaits it hears why."""
        source = self.tx.source
        self.tx.stop()
        if source is not None:
            source.close()
        for done in self._plays.values():
            if not done.done():
                done.set_exception(error)
                done.exception()  # retrieved here: nobody may be left to await it
        self._plays.clear()

    def _warn(self, message: str) -> None:
        """Log what the server sent that was ignored: every time at first, then on the
        2nd, 4th, 8th... so that a flood cannot fill the log."""
        self.warnings += 1
        if self.warnings <= 10 or not self.warnings & (self.warnings - 1):
            log.warning(f"{message} (ignored; {self.warnings} so far)")

    def _discover(self, action: Discover) -> None:
        """Start UDP IP discovery: a fresh socket (arikawa #358), then a request a second,
        five at most; the reply arrives as any datagram does, in the inbox."""
        gw = self.gateway
        mode = gw.session.mode
        if mode not in self.modes:
            offered = [m for m in self.modes if m in gw.session.modes]
            if not offered:
                message = (
                    f"no common encryption mode: the server offers {gw.session.modes}, "
                    f"this session allows {list(self.modes)}"
                )
                self._act(gw.discovery_failed(message, retry=False))
                return
            gw.session.mode = offered[0]
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        self._discovery = None
        try:
            self.udp = _UdpSocket((action.ip, action.port), self.inbox)
        except OSError as exc:
            message = f"UDP IP discovery with {action.ip}:{action.port} failed: {exc}"
            self._act(gw.discovery_failed(message, retry=True))
            return
        self._discovery = _Discovery(action)
        self._discover_again(self._discovery, time.monotonic())

    def _discover_again(self, discovery: _Discovery, now: float) -> None:
        action = discovery.action
        if discovery.sent >= DISCOVERY_ATTEMPTS:
            self._discovery = None
            message = f"UDP IP discovery with {action.ip}:{action.port} got no answer"
            self._act(self.gateway.discovery_failed(message, retry=True))
            return
        assert self.udp is not None
        self.udp.sendto(build_request(action.ssrc))
        discovery.sent += 1
        discovery.retry_at = now + DISCOVERY_RETRY

    def _keepalive(self, now: float) -> None:
        """8 bytes on UDP every few seconds keep NAT mappings open while nothing plays."""
        if self._next_keepalive is None or now < self._next_keepalive or self.udp is None:
            return
        if self._keepalive_echoed and (
            self._keepalives - self._keepalive_echoed >= self.udp_silence_limit
        ):
            log.warning(f"{self.udp_silence_limit} UDP keepalives unanswered: reconnecting")
            self._keepalive_echoed = 0
            self._next_keepalive = None
            self.udp_reconnects += 1
            self._act(self.gateway.udp_lost())
            return
        self._keepalives += 1
        self.udp.sendto(self._keepalives.to_bytes(8, "little"))
        self._next_keepalive = now + self.keepalive_interval

    def _on_udp(self, data: bytes) -> None:
        if len(data) == 8:  # the server echoing a keepalive
            echoed = int.from_bytes(data, "little")
            if self._keepalive_echoed < echoed <= self._keepalives:  # only what we sent
                self._keepalive_echoed = echoed
            return
        if self._discovery is not None:
            if len(data) != DISCOVERY_SIZE:
                self._warn(f"a {len(data)}-byte UDP datagram during IP discovery (want 74)")
                return
            try:
                address, port = parse_response(data, self.gateway.session.ssrc)
            except DiscoveryError as exc:
                self._warn(f"unusable IP discovery reply: {exc}")
                return
            self._discovery = None
            self._act(self.gateway.on_discovered(address, port))
            return
        if len(data) == DISCOVERY_SIZE:
            return  # a late duplicate of the discovery reply
        if self.cipher is None or self.on_audio is None:
            return  # receiving is off unless someone listens
        try:
            header, opus = self.cipher.decrypt(data)
        except DecryptError:
            self.undecryptable += 1  # garbage or not ours: counted, never fatal
            return
        ssrc = int.from_bytes(header[8:12], "big")
        user = self.ssrc_users.get(ssrc)
        if user is None or opus == SILENCE:
            return
        plain = self.dave.decrypt(user, opus)
        if plain is None:
            self.undecryptable += 1
            return
        self.on_audio(user, plain)

    def _forget_member(self, d: Any) -> None:
        """Client disconnect (op 13): its SSRC may be reused by somebody else."""
        with contextlib.suppress(KeyError, TypeError, ValueError):
            user = int(d["user_id"])
            for ssrc in [s for s, u in self.ssrc_users.items() if u == user]:
                del self.ssrc_users[ssrc]

    def _send_audio(self, opus: bytes) -> None:
        if self.udp is None or self.cipher is None or self.rtp is None:
            return
        if opus != SILENCE:  # silence frames go out without E2EE
            opus = self.dave.encrypt(opus)
        self.udp.sendto(self.cipher.encrypt(self.rtp.next_header(), opus))
        self.packets_sent += 1

    async def connected_lost(self) -> None:
        """Return when the voice connection has ended for good (not by leave or move)."""
        await self.ended.wait()

    @property
    def state(self) -> VoiceState:
        return self.gateway.state
