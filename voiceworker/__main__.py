"""``python -m voiceworker``: one guild's voice session as a process (started by the
supervisor with what a shard collected). The voice token comes from the environment
(``SHARDLINE_VOICE_TOKEN``), never the command line. Exit status: 0 left, 1 failed."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import ssl
import sys

from ipc.control import (
    Shutdown,
    VoicePause,
    VoicePlay,
    VoiceResume,
    VoiceServerMove,
    VoiceStatus,
    VoiceStop,
    VoiceVolume,
)
from ipc.logfmt import setup_logging
from shards.links import ControlLink
from voiceworker.audio import open_source
from voiceworker.gateway import VoiceCredentials
from voiceworker.session import VoiceError, VoiceSession

log = logging.getLogger("shardline.voice")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m voiceworker", description=__doc__)
    p.add_argument("--guild", type=int, required=True)
    p.add_argument("--user", type=int, required=True, help="the bot's user id")
    p.add_argument("--session", required=True, help="session_id from VOICE_STATE_UPDATE")
    p.add_argument("--endpoint", required=True, help="endpoint from VOICE_SERVER_UPDATE")
    p.add_argument("--channel", type=int, required=True, help="the voice channel's id (DAVE)")
    p.add_argument("--control", help="supervisor control endpoint; none: play --play and exit")
    p.add_argument("--play", help="standalone: a raw PCM file to play, then leave")
    p.add_argument("--ca-file", help="extra CA bundle (PEM) to trust for wss://")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    return p


async def amain(args: argparse.Namespace) -> int:
    token = os.environ.get("SHARDLINE_VOICE_TOKEN")
    if not token:
        log.error("no voice token: set SHARDLINE_VOICE_TOKEN")
        return 2
    context = ssl.create_default_context()
    if args.ca_file:
        context.load_verify_locations(args.ca_file)
    credentials = VoiceCredentials(
        args.guild, args.user, args.session, token, args.endpoint, args.channel
    )
    session = VoiceSession(credentials, ssl_context=context, precise=True)
    try:
        await session.connect()
    except VoiceError as exc:
        log.error(str(exc))
        return 1
    log.info("voice connected", extra={"fields": {"guild": args.guild}})
    gc.freeze()  # what startup built stays: keep full collections off it while frames flow
    if args.control is None:
        if args.play:
            await session.play(open_source(args.play))
        await session.leave()
        return 0
    control = ControlLink(args.control, f"voice:{args.guild}")
    control.hello("voice", str(args.guild))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    playing: asyncio.Task[None] | None = None
    queue: list[str] = []

    async def player() -> None:
        """Play the queue, one file after the other."""
        while queue:
            path = queue.pop(0)
            try:
                source = open_source(path, session.volume)  # not 1: decode, no passthrough
            except (OSError, ValueError) as exc:
                log.warning(f"cannot play {path}: {exc}")
                continue
            try:
                await session.play(source)
            except ValueError as exc:  # ffmpeg could not decode it
                log.warning(str(exc))

    async def statuses() -> None:
        while True:
            clock = session.clock
            stats = clock.stats() if clock else None
            control.send(
                VoiceStatus(
                    guild=str(args.guild),
                    state=session.state.value,
                    ping_ms=None
                    if session.gateway.latency is None
                    else round(session.gateway.latency * 1000, 2),
                    packets=session.packets_sent,
                    late=stats.late if stats else 0,
                    jitter_p99_ms=round(stats.p99_ms, 3) if stats else None,
                    playing=playing is not None and not playing.done(),
                )
            )
            await asyncio.sleep(1.0)

    async def commands() -> None:
        nonlocal playing
        while True:
            command = await control.receive()
            if isinstance(command, VoicePlay):
                busy = playing is not None and not playing.done()
                if command.queue and busy:
                    queue.append(command.path)
                    continue
                if playing is not None:
                    playing.cancel()
                queue[:] = [command.path]
                session.resume()
                playing = asyncio.create_task(player())
            elif isinstance(command, VoiceStop):
                queue.clear()
                if playing is not None:
                    playing.cancel()
            elif isinstance(command, VoicePause):
                session.pause()
            elif isinstance(command, VoiceResume):
                session.resume()
            elif isinstance(command, VoiceVolume):
                session.set_volume(command.volume)
            elif isinstance(command, VoiceServerMove):
                log.info("voice server moved; reconnecting there")
                await session.move(command.token, command.endpoint)
            elif isinstance(command, Shutdown):
                stop.set()

    tasks = [asyncio.create_task(statuses()), asyncio.create_task(commands())]
    closed = asyncio.create_task(session.connected_lost())
    await asyncio.wait(
        [asyncio.create_task(stop.wait()), closed], return_when=asyncio.FIRST_COMPLETED
    )
    for task in tasks:
        task.cancel()
    await session.leave()
    control.send(VoiceStatus(guild=str(args.guild), state="disconnected"))
    control.close()
    return 0 if stop.is_set() else 1


def main() -> int:
    args = build_parser().parse_args()
    setup_logging("voice", str(args.guild), args.log_level, args.log_format)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run  # type: ignore[assignment]
    try:
        return runner(amain(args))
    except Exception:
        log.exception("voice worker crashed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
