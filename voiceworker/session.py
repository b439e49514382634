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
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ipc.states import VoiceOutcome
from shards.transport import ClosedInfo, WebSocketTransport
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
    Send,
    SendBinary,
    Speaking,
    VoiceAction,
    VoiceCredentials,
    VoiceGateway,
    VoiceState,
    Warn,
)
from voiceworker.rtp import RtpPacketizer

__all__ = ["VoiceError", "VoiceSession"]

log = logging.getLogger("shardline.voice")

PRECISE_STRETCH = 0.002  # with ``precise``: the last 2 ms before a frame are slept exactly
MAX_RECONNECTS = 5  # reconnects in a row without a stable connection, then the session ends
STABLE_AFTER = 60.0  # seconds connected after which the reconnect count starts again


class VoiceError(RuntimeError):
    """The voice connection failed; the message says why."""


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, inbox: asyncio.Queue[Any]) -> None:
        self.inbox = inbox

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.inbox.put_nowait(("udp", data))


def _feeders(
    inbox: asyncio.Queue[Any],
) -> tuple[Callable[[bytes | str], None], Callable[[WebSocketTransport, ClosedInfo], None]]:
    """The transport's callbacks, bound to one connection's inbox."""

    def on_message(message: bytes | str) -> None:
        inbox.put_nowait(("ws", message))

    def on_closed(transport: WebSocketTransport, info: ClosedInfo) -> None:
        inbox.put_nowait(("closed", info))

    return on_message, on_closed


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
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.ws: WebSocketTransport | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.cipher: TransportCipher | None = None
        self.rtp: RtpPacketizer | None = None
        self.connected = asyncio.Event()
        self.failure: Failed | None = None
        self.packets_sent = 0
        self.clock: SendClock | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._discovery: asyncio.Future[tuple[str, int]] | None = None
        self._discovery_task: asyncio.Task[None] | None = None
        self._connected_at: float | None = None
        self.warnings = 0
        self._frames: deque[bytes] = deque()
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
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self.current: AudioSource | None = None
        self.volume = 1.0
        # Receiving: set on_audio(user_id, opus_frame) to hear the other members.
        self.on_audio: Callable[[int, bytes], None] | None = None
        self.ssrc_users: dict[int, int] = {}
        self.undecryptable = 0

    # -- the library face -----------------------------------------------------------------

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

    async def play(self, source: AudioSource) -> int:
        """Send the source's frames on the 20 ms clock (read one at a time, so a long file
        starts at once), pausing when asked, then five silence frames. SPEAKING goes out
        first. Returns the audio frames sent, silence included."""
        if not self.connected.is_set() or self.ws is None:
            raise VoiceError("not connected")
        self.current = source
        self._act([self.gateway.speaking(1)])
        clock = self.clock = SendClock(time.monotonic())
        sent = 0
        try:
            while (frame := source.read()) is not None:
                if not self._unpaused.is_set():
                    sent += await self._silence(clock)
                    self._act([self.gateway.speaking(0)])
                    paused_at = time.monotonic()
                    await self._unpaused.wait()
                    if self.rtp is not None:  # the timestamp keeps counting real time
                        self.rtp.skip(int((time.monotonic() - paused_at) / 0.020))
                    self._act([self.gateway.speaking(1)])
                    clock.restart(time.monotonic())
                await self._send_on_time(clock, frame)
                sent += 1
            sent += await self._silence(clock)
        finally:
            self._act([self.gateway.speaking(0)])
            source.close()
            self.current = None
        return sent

    async def _send_on_time(self, clock: SendClock, frame: bytes) -> None:
        delay = clock.deadline() - time.monotonic()
        if self.precise and delay > PRECISE_STRETCH:
            await asyncio.sleep(delay - PRECISE_STRETCH)
            delay = clock.deadline() - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # to the microsecond: loop timers wake up to 1 ms late
        elif delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()  # the frame leaves now: the syscall's own time is the kernel's
        self._send_audio(frame)
        clock.sent_at(now)

    async def _silence(self, clock: SendClock) -> int:
        """Five silence frames: how a transmission ends, so that decoders do not glitch."""
        for _ in range(5):
            await self._send_on_time(clock, SILENCE)
        return 5

    def pause(self) -> None:
        """Stop sending after the current frame (with five silence frames)."""
        self._unpaused.clear()

    def resume(self) -> None:
        self._unpaused.set()

    @property
    def paused(self) -> bool:
        return not self._unpaused.is_set()

    def set_volume(self, volume: float) -> None:
        """Scale what is playing (and what plays next) by ``volume`` (1.0 = as is)."""
        self.volume = max(0.0, volume)
        if self.current is not None and hasattr(self.current, "volume"):
            self.current.volume = self.volume

    async def move(self, token: str, endpoint: str) -> None:
        """A new VOICE_SERVER_UPDATE (a region move): connect to the new server afresh."""
        await self.leave()
        self.gateway.new_server(token, endpoint)
        self.dave.forget_call()
        self.inbox = asyncio.Queue()
        self.connected.clear()
        self.cipher = self.rtp = self.udp = self.ws = None
        self.failure = None
        await self.connect()

    async def leave(self) -> None:
        """Close the connection. The loop is stopped first, so that it does not read its own
        close as the connection ending by itself."""
        for task in (self._discovery_task, self._loop_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.ws is not None:
            self.ws.close(1000, "leaving")
        if self.udp is not None:
            self.udp.close()

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
        self.ended.set()  # ended by itself (not cancelled by leave or move): failure says why

    def _fail(self, failure: Failed) -> None:
        """Keep the first cause: the closes and timeouts it leads to only follow from it."""
        log.warning(failure.message)
        if self.failure is None:
            self.failure = failure

    async def _run(self) -> None:
        """The one loop. A close the gateway says to resume after (a dropped socket, 4015,
        our own zombie close) reconnects and RESUMEs here, keeping UDP and keys; anything
        else ends the loop with ``failure`` saying why."""
        gw = self.gateway
        attempt = 0
        while True:
            on_message, on_closed = _feeders(self.inbox)  # a move gives the next a new inbox
            try:
                self.ws = await WebSocketTransport.connect(
                    gw.credentials.url(), on_message, on_closed, ssl_context=self.ssl_context
                )
            except OSError as exc:
                if not gw.resumable or attempt >= MAX_RECONNECTS:
                    self._fail(
                        Failed(None, VoiceOutcome.REJOIN, f"cannot reach the voice server: {exc}")
                    )
                    return
                attempt += 1
                await asyncio.sleep(min(5.0, 0.25 * 2**attempt))
                continue
            self._act(gw.on_connected(time.monotonic()))
            await self._serve()
            if gw.state is not VoiceState.BACKING_OFF:
                return
            stable = self._connected_at is not None and (
                time.monotonic() - self._connected_at >= STABLE_AFTER
            )
            self._connected_at = None
            attempt = 1 if stable else attempt + 1
            if attempt > MAX_RECONNECTS:
                cause = self.failure.message if self.failure else "connection lost"
                self.failure = None
                self._fail(
                    Failed(
                        None,
                        VoiceOutcome.REJOIN,
                        f"the voice connection dropped {attempt - 1} times in a row without "
                        f"staying up {STABLE_AFTER:.0f}s (first: {cause}); giving it up",
                    )
                )
                return
            await asyncio.sleep(min(5.0, 0.05 * 2**attempt) if attempt > 1 else 0)

    async def _serve(self) -> None:
        """Serve one websocket connection until it closes."""
        gw = self.gateway
        while True:
            deadlines = [d for d in (gw.next_deadline(), self._next_keepalive) if d is not None]
            deadline = min(deadlines) if deadlines else None
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                kind, item = await asyncio.wait_for(self.inbox.get(), timeout)
            except TimeoutError:
                now = time.monotonic()
                self._act(gw.poll(now))
                self._keepalive(now)
                continue
            now = time.monotonic()
            if kind == "ws":
                self._act(gw.receive(item, now))
            elif kind == "udp":
                self._on_udp(item)
            elif kind == "discovery":
                address, port = item
                self._act(gw.on_discovered(address, port))
            elif kind == "discovery failed":
                message, retry = item
                self._act(gw.discovery_failed(message, retry=retry))
            elif kind == "closed":
                assert isinstance(item, ClosedInfo)
                self._act(gw.on_closed(item.code, now))
                if gw.state is not VoiceState.BACKING_OFF:
                    self.connected.clear()
                return
            self._act(gw.poll(now))
            self._keepalive(now)

    def _act(self, actions: list[VoiceAction]) -> None:
        for action in actions:
            if isinstance(action, Send | SendBinary):
                if self.ws is not None and self.ws.open:
                    self.ws.send(action.data, binary=isinstance(action, SendBinary))
            elif isinstance(action, Close):
                if self.ws is not None:
                    self.ws.close(action.code, action.reason)
            elif isinstance(action, Discover):
                if self._discovery_task is not None:
                    self._discovery_task.cancel()
                self._discovery_task = asyncio.get_running_loop().create_task(
                    self._discover(action, self.inbox)
                )
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

    def _warn(self, message: str) -> None:
        """Log what the server sent that was ignored: every time at first, then on the
        2nd, 4th, 8th... so that a flood cannot fill the log."""
        self.warnings += 1
        if self.warnings <= 10 or not self.warnings & (self.warnings - 1):
            log.warning(f"{message} (ignored; {self.warnings} so far)")

    async def _discover(self, action: Discover, inbox: asyncio.Queue[Any]) -> None:
        """UDP IP discovery, owned by the session (``leave`` cancels it); its outcome goes
        to the loop's inbox, as everything else does."""
        loop = asyncio.get_running_loop()
        gw = self.gateway
        mode = gw.session.mode
        if mode not in self.modes:
            offered = [m for m in self.modes if m in gw.session.modes]
            if not offered:
                message = (
                    f"no common encryption mode: the server offers {gw.session.modes}, "
                    f"this session allows {list(self.modes)}"
                )
                inbox.put_nowait(("discovery failed", (message, False)))
                return
            gw.session.mode = offered[0]
        if self.udp is not None:
            self.udp.close()  # a reconnect gets a fresh socket (arikawa #358)
            self.udp = None
        try:
            self.udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(inbox), remote_addr=(action.ip, action.port)
            )
            self._discovery = loop.create_future()
            for _ in range(5):
                self.udp.sendto(build_request(action.ssrc))
                try:
                    found = await asyncio.wait_for(asyncio.shield(self._discovery), 1.0)
                    break
                except TimeoutError:
                    continue
            else:
                message = f"UDP IP discovery with {action.ip}:{action.port} got no answer"
                inbox.put_nowait(("discovery failed", (message, True)))
                return
        except OSError as exc:
            message = f"UDP IP discovery with {action.ip}:{action.port} failed: {exc}"
            inbox.put_nowait(("discovery failed", (message, True)))
            return
        inbox.put_nowait(("discovery", found))

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
        discovering = self._discovery is not None and not self._discovery.done()
        if discovering and self._discovery is not None:
            if len(data) != DISCOVERY_SIZE:
                self._warn(f"a {len(data)}-byte UDP datagram during IP discovery (want 74)")
                return
            try:
                self._discovery.set_result(parse_response(data, self.gateway.session.ssrc))
            except DiscoveryError as exc:
                self._warn(f"unusable IP discovery reply: {exc}")
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
