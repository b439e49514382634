"""The supervisor's side of voice: one process per guild's voice session.

A join asks the owning shard to send op 4; the shard forwards the bot's VOICE_STATE_UPDATE
(session id) and the VOICE_SERVER_UPDATE (token, endpoint); with both, a voice process
starts. Later VOICE_SERVER_UPDATEs (region moves) go to it; a leave, a disconnect or its
death reap it (a death rejoins, a bounded number of times).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ipc.control import VoiceStatus
from ipc.states import VoiceOutcome, VoiceState
from ipc.status import VoiceSessionRecord, reported_count, reported_number
from ipc.workerargs import VoiceArgs
from runtime.config import VoiceConfig
from runtime.procs import end_process
from runtime.totals import VoiceTotals

__all__ = ["VoiceWorker"]


@dataclass
class VoiceWorker:
    guild: int
    channel: int
    user_id: int = 0
    session_id: str = ""
    token: str = ""
    endpoint: str = ""
    proc: asyncio.subprocess.Process | None = None
    report: VoiceStatus | None = None  # the process's last status report
    totals: VoiceTotals = field(default_factory=VoiceTotals)  # counts across its processes
    watcher: asyncio.Task[None] | None = None
    leaving: bool = False
    rejoins: int = 0
    started_at: float = 0.0
    # How the last process said its session ended (control.voice_ended): outcome, message.
    ended: tuple[VoiceOutcome | None, str] | None = None
    error: str = ""  # set when the session failed for good: the first cause
    connected_since: float | None = None
    join_deadline: float | None = None  # op 4 sent: connected by then, or failed
    rejoin_at: float | None = None  # a rejoin is due then
    server_deadline: float | None = None  # 4014: a new voice server must come by then

    @property
    def ready_to_start(self) -> bool:
        return (
            bool(self.session_id and self.token and self.endpoint)
            and self.proc is None
            and not self.error
        )

    @property
    def state(self) -> VoiceState:
        if self.error:
            return VoiceState.FAILED
        if self.proc is None:
            if self.leaving:
                return VoiceState.LEAVING
            if self.server_deadline is not None:
                return VoiceState.WAITING_SERVER
            return VoiceState.REJOINING if self.rejoin_at is not None else VoiceState.JOINING
        if self.report is None:
            return VoiceState.CONNECTING
        try:
            return VoiceState(self.report.raw.get("state"))
        except ValueError:
            return VoiceState.CONNECTING

    @property
    def connected(self) -> bool:
        return self.proc is not None and self.state is VoiceState.CONNECTED

    def fail(self, reason: str) -> None:
        """The session is over for good; status keeps saying why until a leave or a join."""
        self.error = reason
        self.join_deadline = self.rejoin_at = self.server_deadline = None
        self.session_id = self.token = self.endpoint = ""

    def record(self) -> VoiceSessionRecord:
        r = self.report.raw if self.report is not None else {}
        return VoiceSessionRecord(
            guild=str(self.guild),
            channel=str(self.channel),
            state=self.state,
            ping=reported_number(r.get("ping_ms")),
            packets=reported_count(r.get("packets")),
            late=reported_count(r.get("late")),
            jitter=reported_number(r.get("jitter_p99_ms")),
            rejoins=self.rejoins,
            pid=None if self.proc is None else self.proc.pid,
            error=self.error or None,
        )

    async def start(
        self,
        control: str,
        events: str,
        ca_file: str,
        log_level: str,
        options: VoiceConfig,
        preexec: Callable[[], None],
        on_exit: Callable[[VoiceWorker, int], Awaitable[None]],
        token_env: str = "DISCORD_TOKEN",
    ) -> None:
        args = VoiceArgs(
            guild=self.guild,
            user=self.user_id,
            session=self.session_id,
            endpoint=self.endpoint,
            channel=self.channel,
            control=control,
            events=events,
            nice=options.nice,
            log_level=log_level,
            ca_file=ca_file or None,
            receive=options.receive,
        )
        # The voice token, not the bot's: a voice process never talks to the main gateway.
        env = {k: v for k, v in os.environ.items() if k != token_env}
        env["SHARDLINE_VOICE_TOKEN"] = self.token
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "voiceworker",
            *args.to_argv(),
            env=env,
            preexec_fn=preexec,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        proc = self.proc

        async def watch() -> None:
            code = await proc.wait()
            if self.proc is proc:
                self.proc = None
            await on_exit(self, code)

        # Owned: kept here until it ends, cancelled by stop() (never an orphan task).
        self.watcher = asyncio.get_running_loop().create_task(watch())

    async def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL after 5 s) and its watcher."""
        proc = self.proc
        if proc is not None:
            await end_process(proc)
            if self.proc is proc:
                self.proc = None
        if self.watcher is not None and self.watcher is not asyncio.current_task():
            self.watcher.cancel()
            self.watcher = None
