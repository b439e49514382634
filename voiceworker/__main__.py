"""``python -m voiceworker``: one guild's voice session as a process (started by the
supervisor with what a shard collected). The voice token comes from the environment
(``SHARDLINE_VOICE_TOKEN``), never the command line. Exit status: 0 left, 1 failed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys

from conn import tls
from ipc import eventloop
from ipc.codec import CodecError
from ipc.control import (
    Shutdown,
    VoiceEnded,
    VoicePause,
    VoicePlay,
    VoiceRecord,
    VoiceResume,
    VoiceServerMove,
    VoiceStatus,
    VoiceStop,
    VoiceVolume,
)
from ipc.exits import ExitStatus
from ipc.labels import lateness_bucket_labels
from ipc.links import ControlLink, EventPublisher, NullPublisher
from ipc.logfmt import setup_logging
from ipc.states import VoiceOutcome, VoiceState
from ipc.voice import TrackEnd, TrackStart, VoiceAudio, VoiceFailure, VoiceStats
from ipc.workerargs import VoiceArgs
from voiceworker.audio import open_source
from voiceworker.gateway import VoiceCredentials
from voiceworker.recorder import Recorder
from voiceworker.session import VoiceError, VoiceSession

log = logging.getLogger("shardline.voice")
BUCKET_LABELS = lateness_bucket_labels()  # the status report's keys for send lateness


async def amain(args: VoiceArgs) -> int:
    token = os.environ.get("SHARDLINE_VOICE_TOKEN")
    if not token:
        log.error("no voice token: set SHARDLINE_VOICE_TOKEN")
        return ExitStatus.USAGE
    raise_priority(args.nice)
    try:
        context = tls.client_context(args.ca_file)
    except (OSError, ssl.SSLError) as exc:
        log.error(f"cannot use --ca-file {args.ca_file}: {exc}")
        return ExitStatus.USAGE
    credentials = VoiceCredentials(
        args.guild, args.user, args.session, token, args.endpoint, args.channel
    )
    session = VoiceSession(credentials, ssl_context=context, precise=True)
    source_name = args.source
    bus = EventPublisher(args.events, source_name) if args.events else NullPublisher(source_name)
    control = ControlLink(args.control, source_name) if args.control else None
    try:
        await session.connect()
    except VoiceError as exc:
        log.error(str(exc))
        bus.event(VoiceFailure(message=str(exc), source=source_name, guild_id=args.guild))
        if control is not None:
            control.send(ended(args.guild, session, str(exc)))
            control.close()
        bus.close()
        return ExitStatus.CRASH
    log.info("voice connected", extra={"fields": {"guild": args.guild}})
    gc.freeze()  # what startup built stays: keep full collections off it while frames flow
    if control is None:
        if args.play:
            await session.play(open_source(args.play))
        await session.leave()
        bus.close()
        return ExitStatus.STOPPED
    worker = Worker(args, session, bus, control)
    return await worker.run()


def ended(guild: int, session: VoiceSession, message: str) -> VoiceEnded:
    """How the session ended, for the supervisor's retry policy: the close-code table's
    outcome and the first cause (a timeout with no cause is worth a rejoin)."""
    failure = session.failure
    return VoiceEnded(
        guild=str(guild),
        outcome=failure.outcome if failure else VoiceOutcome.REJOIN,
        code=(failure.code or 0) if failure else 0,
        message=message,
    )


def raise_priority(nice: int) -> None:
    """Ask for a better CPU priority (voice.nice), so that nothing else on the machine
    delays a frame; without the right to (CAP_SYS_NICE), say so and run as we are."""
    if nice >= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except (PermissionError, OSError) as exc:
        log.info(f"voice.nice {nice} not applied ({exc.strerror}): running at normal priority")


class Worker:
    """The process around a connected session: the supervisor's commands, a play queue,
    status to the supervisor, and events on the bus."""

    def __init__(
        self,
        args: VoiceArgs,
        session: VoiceSession,
        bus: NullPublisher,
        control: ControlLink,
    ) -> None:
        self.args = args
        self.guild = int(args.guild)
        self.session = session
        self.bus = bus
        self.control = control
        self.source = args.source
        self.stop = asyncio.Event()
        self.playing: asyncio.Task[None] | None = None
        self.queue: list[str] = []
        self.recorder: Recorder | None = None
        self.receive = bool(args.receive)
        if self.receive:
            session.on_audio = self.on_audio

    async def run(self) -> int:
        self.control.hello("voice", str(self.guild))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        stopped = asyncio.create_task(self.stop.wait())
        closed = asyncio.create_task(self.session.connected_lost())
        tasks = [
            asyncio.create_task(self.statuses()),
            asyncio.create_task(self.commands()),
            stopped,
            closed,
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks[:2]:  # statuses and commands never end by themselves: a bug did
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("voice worker task failed", exc_info=task.exception())
        for task in tasks:  # every task this worker started ends here
            task.cancel()
        if self.playing is not None:
            self.playing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.playing
        if not self.stop.is_set():
            failure = self.session.failure
            message = failure.message if failure else "the voice connection ended"
            self.bus.event(VoiceFailure(message=message, source=self.source, guild_id=self.guild))
            self.control.send(ended(self.guild, self.session, message))
        await self.session.leave()
        self.record("")
        self.control.send(VoiceStatus(guild=str(self.guild), state=VoiceState.DISCONNECTED))
        self.control.close()
        self.bus.close()
        return ExitStatus.STOPPED if self.stop.is_set() else ExitStatus.CRASH

    # -- audio in -------------------------------------------------------------------------

    def on_audio(self, user_id: int, opus: bytes) -> None:
        if self.receive:
            self.bus.event(VoiceAudio.of(self.guild, user_id, opus))
        if self.recorder is not None:
            self.recorder.on_audio(user_id, opus)

    def record(self, directory: str) -> None:
        """Start recording into ``directory`` (one WAV per member), or stop with ""."""
        if self.recorder is not None:
            self.recorder.close()
            log.info(f"recording stopped: {self.recorder.frames} frames by user")
            self.recorder = None
        if directory:
            self.recorder = Recorder(directory)
            self.session.on_audio = self.on_audio
            log.info(f"recording to {directory}")
        elif not self.receive:
            self.session.on_audio = None  # nobody listens: received packets are skipped

    # -- audio out ------------------------------------------------------------------------

    async def player(self) -> None:
        """Play the queue, one file after the other; each track starts and ends on the bus."""
        while self.queue:
            path = self.queue.pop(0)
            try:
                source = open_source(path, self.session.volume)  # not 1: decode, no passthrough
            except (OSError, ValueError) as exc:
                self.track_failed(path, 0, f"cannot play {path}: {exc}")
                continue
            self.bus.event(TrackStart(guild_id=self.guild, path=path))
            frames, reason, error = 0, "finished", None
            try:
                frames = await self.session.play(source)
            except asyncio.CancelledError:
                reason = "stopped"
                self.bus.event(TrackEnd(guild_id=self.guild, path=path, reason=reason))
                raise
            except (ValueError, VoiceError) as exc:  # ffmpeg could not decode it; or we left
                reason, error = "error", str(exc)
                self.track_failed(path, frames, error)
                continue
            self.bus.event(
                TrackEnd(guild_id=self.guild, path=path, reason=reason, frames=frames, error=error)
            )

    def track_failed(self, path: str, frames: int, error: str) -> None:
        log.warning(error)
        self.bus.event(
            TrackEnd(guild_id=self.guild, path=path, reason="error", frames=frames, error=error)
        )
        self.bus.event(VoiceFailure(message=error, source=self.source, guild_id=self.guild))

    # -- the supervisor -------------------------------------------------------------------

    async def statuses(self) -> None:
        """Status to the supervisor every second; stats on the bus every five."""
        tick = 0
        while True:
            session = self.session
            lateness = session.tx.lateness
            stats = session.clock.stats() if session.clock else None
            ping = None if session.gateway.latency is None else session.gateway.latency * 1000
            jitter = round(stats.p99_ms, 3) if stats else None
            late = stats.late if stats else 0
            self.control.send(
                VoiceStatus(
                    guild=str(self.guild),
                    state=session.state,
                    ping_ms=None if ping is None else round(ping, 2),
                    packets=session.packets_sent,
                    late=late,
                    jitter_p99_ms=jitter,
                    playing=self.playing is not None and not self.playing.done(),
                    lateness_buckets=dict(zip(BUCKET_LABELS, lateness.counts, strict=True)),
                    lateness_sum=lateness.total,
                    dave_epoch=session.dave.epoch,
                    dave_transitions=session.dave.transitions,
                )
            )
            if tick % 5 == 0:
                self.bus.event(
                    VoiceStats(
                        guild_id=self.guild,
                        state=session.state,
                        ping_ms=None if ping is None else round(ping, 2),
                        packets=session.packets_sent,
                        late=late,
                        jitter_p99_ms=jitter,
                        dave_protocol_version=session.dave.version,
                        e2ee=session.dave.active,
                    )
                )
            tick += 1
            await asyncio.sleep(1.0)

    async def commands(self) -> None:
        session = self.session
        while True:
            try:
                command = await self.control.receive()
            except CodecError as exc:  # the supervisor's bug, not a reason to go deaf
                log.warning(f"unreadable control message ignored: {exc}")
                continue
            if isinstance(command, VoicePlay):
                busy = self.playing is not None and not self.playing.done()
                if command.queue and busy:
                    self.queue.append(command.path)
                    continue
                if self.playing is not None:
                    self.playing.cancel()
                self.queue[:] = [command.path]
                session.resume()
                self.playing = asyncio.create_task(self.player())
            elif isinstance(command, VoiceStop):
                self.queue.clear()
                if self.playing is not None:
                    self.playing.cancel()
            elif isinstance(command, VoicePause):
                session.pause()
            elif isinstance(command, VoiceResume):
                session.resume()
            elif isinstance(command, VoiceVolume):
                session.set_volume(command.volume)
            elif isinstance(command, VoiceRecord):
                try:
                    self.record(command.directory)
                except OSError as exc:
                    message = f"cannot record to {command.directory}: {exc}"
                    log.warning(message)
                    self.bus.event(
                        VoiceFailure(message=message, source=self.source, guild_id=self.guild)
                    )
            elif isinstance(command, VoiceServerMove):
                log.info("voice server moved; reconnecting there")
                await session.move(command.token, command.endpoint)
            elif isinstance(command, Shutdown):
                self.stop.set()


def main() -> int:
    args = VoiceArgs.from_argv()
    setup_logging("voice", str(args.guild), args.log_level, args.log_format)
    try:
        return eventloop.run(amain(args))
    except Exception:
        log.exception("voice worker crashed")
        return ExitStatus.CRASH


if __name__ == "__main__":
    sys.exit(main())
