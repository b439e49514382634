"""The supervisor's voice sessions, one process per guild: joins and leaves the bot asks
for, the voice state and server Discord sends back through the shard, the voice processes'
reports, and what happens when one ends (``runtime.voicepolicy``). The voice commands of
the command desk are handled here."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ipc.commands import UpdateVoiceState
from ipc.control import (
    GatewayForward,
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
from ipc.events import VoiceServerUpdate, VoiceStateUpdate
from ipc.fields import check_snowflake
from ipc.logfmt import about
from ipc.messages import Command, ErrorCode, ErrorReply, Event, Message, Reply, Routed
from ipc.requests import (
    JoinVoice,
    LeaveVoice,
    PauseAudio,
    PlayAudio,
    Record,
    Recording,
    ResumeAudio,
    SetVolume,
    StopAudio,
    VoiceRequest,
)
from ipc.states import ShardState, VoiceOutcome, VoiceState
from ipc.status import VoiceSessionRecord
from ipc.voice import VoiceFailure
from runtime.commands import CommandDesk, Options
from runtime.config import Config
from runtime.routing import shard_of_guild
from runtime.voice import VoiceWorker
from runtime.voicepolicy import (
    HEALTHY_AFTER,
    JOIN_TIMEOUT,
    WAIT_FOR_SERVER,
    Next,
    Op4Budget,
    after_exit,
)

__all__ = ["VoiceFleet"]

log = logging.getLogger("shardline.supervisor")


class VoiceFleet:
    def __init__(
        self,
        config: Config,
        runtime_dir: Path,
        shard_count: int,
        *,
        shard_state: Callable[[int], ShardState | None],
        send: Callable[[str, Message], None],
        publish: Callable[[Event], None],
        control: str,
        bus_in: str,
        preexec: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.runtime_dir = runtime_dir
        self.shard_count = shard_count
        self.shard_state = shard_state  # None: this host does not run that shard
        self.send = send
        self.publish = publish
        self.control = control
        self.bus_in = bus_in
        self.preexec = preexec
        self.clock = clock
        self.sessions: dict[int, VoiceWorker] = {}  # by guild id
        self.op4_budget = Op4Budget()
        self.stopping = False

    def register(self, desk: CommandDesk) -> None:
        desk.handle(JoinVoice, self.on_join)
        desk.handle(LeaveVoice, self.on_leave)
        desk.handle(VoiceRequest, self.on_request)

    # -- what the bot asks --------------------------------------------------------------

    async def on_join(self, command: JoinVoice, options: Options) -> Reply:
        guild, channel = command.guild_id, command.channel_id
        voice = self.sessions.get(guild)
        if voice is None or voice.channel != channel or voice.error:
            if voice is not None:
                voice.leaving = True
                await voice.stop()
            self.sessions[guild] = voice = VoiceWorker(guild, channel)
        reply = self._voice_state(guild, channel)
        if isinstance(reply, ErrorReply) and voice.proc is None:
            self.sessions.pop(guild, None)  # nothing was asked of Discord
        return reply

    async def on_leave(self, command: LeaveVoice, options: Options) -> Reply:
        guild = command.guild_id
        voice = self.sessions.get(guild)
        if voice is None:
            return ErrorReply.of(ErrorCode.UNAVAILABLE, f"voice not connected in guild {guild}")
        voice.leaving = True
        await voice.stop()
        self.sessions.pop(guild, None)
        return self._voice_state(guild, None)

    async def on_request(self, command: VoiceRequest, options: Options) -> Reply:
        """play, stop, pause, resume, volume, record: for a connected voice process."""
        guild = command.guild_id
        voice = self.sessions.get(guild)
        if voice is None:
            return ErrorReply.of(ErrorCode.UNAVAILABLE, f"voice not connected in guild {guild}")
        if not voice.connected:
            why = f"failed: {voice.error}" if voice.error else voice.state
            return ErrorReply.of(
                ErrorCode.UNAVAILABLE, f"voice not connected in guild {guild} ({why})"
            )
        routed = f"voice:{guild}"
        message: Command
        if isinstance(command, PlayAudio):
            if not os.path.isfile(command.path):
                return ErrorReply.of(ErrorCode.INVALID, f"no such file: {command.path!r}")
            message = VoicePlay(path=os.path.abspath(command.path), queue=command.queue)
        elif isinstance(command, SetVolume):
            message = VoiceVolume(volume=command.volume)
        elif isinstance(command, Record):
            directory = "" if command.stop else self._recording_dir(guild)
            self.send(routed, VoiceRecord(directory=directory))
            return Recording(routed=routed, directory=directory)
        elif isinstance(command, StopAudio):
            message = VoiceStop()
        elif isinstance(command, PauseAudio):
            message = VoicePause()
        elif isinstance(command, ResumeAudio):
            message = VoiceResume()
        else:
            return ErrorReply.of(
                ErrorCode.UNKNOWN_COMMAND, f"{command.type_name} is not handled here"
            )
        self.send(routed, message)
        return Routed(routed=routed)

    def _recording_dir(self, guild: int) -> str:
        base = Path(self.config.voice.record_dir or self.runtime_dir / "recordings")
        return str(base / f"{guild}-{time.strftime('%Y%m%d-%H%M%S')}")

    def _voice_state(self, guild: int, channel: int | None) -> Reply:
        """Ask the shard that owns ``guild`` to send op 4 (counted in its op 4 budget)."""
        shard = shard_of_guild(guild, self.shard_count)
        state = self.shard_state(shard)
        if state is None:
            return ErrorReply.of(
                ErrorCode.UNROUTABLE, f"guild {guild} is on shard {shard}, not run here"
            )
        if state is not ShardState.READY:
            return ErrorReply.of(
                ErrorCode.UNAVAILABLE, f"guild {guild} is on shard {shard}, which is down ({state})"
            )
        now = self.clock()
        self.op4_budget.record(shard, now)  # the bot asked: it counts, and rejoins wait for it
        self.send(f"shard:{shard}", UpdateVoiceState(guild, channel))
        voice = self.sessions.get(guild)
        if voice is not None and channel is not None:
            voice.join_deadline = now + JOIN_TIMEOUT
        return Routed(routed=f"shard:{shard}")

    # -- what Discord says, through the shard -------------------------------------------

    async def on_forward(self, message: GatewayForward) -> None:
        """The bot's VOICE_STATE_UPDATE or a VOICE_SERVER_UPDATE, from a shard: Discord's
        data, checked before a voice process is started with it."""
        try:
            d = orjson.loads(message.payload)["d"]
            guild = int(d["guild_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning(
                f"unusable {message.t[:40]} from shard {message.shard}; ignored",
                extra=about(shard=message.shard),
            )
            return
        voice = self.sessions.get(guild)
        if voice is None or voice.error:
            return
        if message.t == VoiceStateUpdate.type_name:
            if d.get("channel_id") is None:  # we left, or were disconnected
                voice.leaving = True
                await voice.stop()
                self.sessions.pop(guild, None)
                return
            session_id, user_id = d.get("session_id"), d.get("user_id")
            if not _short_text(session_id) or check_snowflake(user_id) is not None:
                log.warning(
                    f"unusable VOICE_STATE_UPDATE for guild {guild}; ignored",
                    extra=about(guild=guild),
                )
                return
            voice.session_id, voice.user_id = session_id, int(user_id)
        elif message.t == VoiceServerUpdate.type_name:
            token, endpoint = d.get("token"), d.get("endpoint")
            if not endpoint:
                return  # the server is gone; the next update names a new one
            if not (_short_text(token) and _short_text(endpoint)):
                log.warning(
                    f"unusable VOICE_SERVER_UPDATE for guild {guild}; ignored",
                    extra=about(guild=guild),
                )
                return
            # A new server or a new token (a move to another channel): identify afresh there.
            moved = voice.proc is not None and (voice.endpoint != endpoint or voice.token != token)
            voice.token, voice.endpoint = token, endpoint
            voice.server_deadline = None
            if moved:
                self.send(f"voice:{guild}", VoiceServerMove(token=token, endpoint=endpoint))
                return
        if voice.ready_to_start:
            voice.rejoin_at = None
            await voice.start(
                self.control,
                self.bus_in,
                self.config.discord.ca_file,
                self.config.log.level,
                self.config.voice,
                self.preexec,
                self._exited,
                self.config.discord.token_env,
            )

    # -- what the voice processes say, and how they end ---------------------------------

    def on_control(self, guild: int, message: Message) -> None:
        voice = self.sessions.get(guild)
        if voice is None:
            return
        if isinstance(message, VoiceStatus):
            voice.report = message
            if voice.proc is not None:
                voice.totals.add(voice.proc.pid, message)
            if voice.state is VoiceState.CONNECTED:
                voice.join_deadline = None
                if voice.connected_since is None:
                    voice.connected_since = self.clock()
        elif isinstance(message, VoiceEnded):
            outcome, text = message.raw.get("outcome"), message.raw.get("message")
            if isinstance(text, str):
                try:
                    said: VoiceOutcome | None = VoiceOutcome(outcome)
                except ValueError:
                    said = None  # an outcome nobody declared: retried like a crash
                voice.ended = (said, text[:1000])

    async def _exited(self, voice: VoiceWorker, code: int) -> None:
        """A voice process exited by itself: rejoin, wait for a new server, or give up, as
        :func:`runtime.voicepolicy.after_exit` says for how its session ended."""
        if voice.leaving or self.stopping or self.sessions.get(voice.guild) is not voice:
            return
        now = self.clock()
        if voice.connected_since is not None and now - voice.connected_since >= HEALTHY_AFTER:
            voice.rejoins = 0  # that session was healthy: this is a first failure again
        voice.connected_since = None
        outcome, message = voice.ended or (None, f"the voice process exited ({code})")
        voice.ended = None
        voice.report = None
        voice.session_id = voice.token = voice.endpoint = ""
        decision = after_exit(outcome, message, voice.rejoins)
        if decision.next is Next.FAIL:
            self._failed(voice, decision.reason)
        elif decision.next is Next.WAIT_SERVER:
            log.warning(
                f"voice in guild {voice.guild}: {message}; waiting {decision.delay:.0f}s for a "
                "new voice server",
                extra=about(guild=voice.guild),
            )
            voice.server_deadline = now + decision.delay
        else:
            voice.rejoins += 1
            voice.rejoin_at = now + decision.delay
            log.warning(
                f"voice in guild {voice.guild}: {message}; rejoining in {decision.delay:.1f}s "
                f"(rejoin {voice.rejoins})",
                extra=about(guild=voice.guild),
            )

    def _failed(self, voice: VoiceWorker, reason: str) -> None:
        """End a guild's voice session for good: say why in the log, in status and on the
        bus, and leave the channel (the bot would sit in it deaf and mute)."""
        log.error(f"voice in guild {voice.guild} failed: {reason}", extra=about(guild=voice.guild))
        voice.fail(reason)
        self.publish(VoiceFailure(message=reason, source="supervisor", guild_id=voice.guild))
        shard = shard_of_guild(voice.guild, self.shard_count)
        if self.shard_state(shard) is ShardState.READY:
            self.op4_budget.record(shard, self.clock())
            self.send(f"shard:{shard}", UpdateVoiceState(voice.guild, None))

    def tick(self, now: float) -> None:
        """The voice deadlines: due rejoins (within the op 4 budget), joins that took too
        long, and 4014 waits that no new voice server ended."""
        for voice in list(self.sessions.values()):
            if voice.error or voice.leaving:
                continue
            if voice.rejoin_at is not None and now >= voice.rejoin_at:
                shard = shard_of_guild(voice.guild, self.shard_count)
                wait = self.op4_budget.wait(shard, now)
                if self.shard_state(shard) is not ShardState.READY or wait > 0:
                    voice.rejoin_at = now + max(wait, 1.0)  # the shard is busy or down
                    continue
                voice.rejoin_at = None
                self.op4_budget.take(shard, now)
                self.send(f"shard:{shard}", UpdateVoiceState(voice.guild, voice.channel))
                voice.join_deadline = now + JOIN_TIMEOUT
            elif voice.server_deadline is not None and now >= voice.server_deadline:
                self._failed(
                    voice,
                    f"disconnected (4014: kicked, channel deleted or moved) and no new voice "
                    f"server came within {WAIT_FOR_SERVER:.0f}s",
                )
            elif voice.join_deadline is not None and now >= voice.join_deadline:
                if voice.proc is not None:
                    continue  # connecting: the voice process's own timeout ends it
                self._failed(
                    voice,
                    f"Discord sent no voice state and server for guild {voice.guild} within "
                    f"{JOIN_TIMEOUT:.0f}s of the join: is the bot in the guild, may it connect "
                    f"to channel {voice.channel}, is the channel full?",
                )

    async def shutdown(self) -> None:
        self.stopping = True
        for voice in list(self.sessions.values()):
            voice.leaving = True
            await voice.stop()

    def records(self) -> list[VoiceSessionRecord]:
        return [v.record() for v in self.sessions.values()]


def _short_text(value: Any) -> bool:
    """A non-empty string of reasonable length (a token, an endpoint, a session id)."""
    return isinstance(value, str) and 0 < len(value) <= 512 and value.isprintable()
