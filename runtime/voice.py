"""The supervisor's side of voice: one process per guild's voice session.

A join asks the owning shard to send op 4; the shard forwards the bot's VOICE_STATE_UPDATE
(session id) and the VOICE_SERVER_UPDATE (token, endpoint); with both, a voice process
starts. Later VOICE_SERVER_UPDATEs (region moves) go to it; a leave, a disconnect or its
death reap it (a death rejoins, a bounded number of times).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.config import VoiceConfig

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
    status: dict[str, Any] = field(default_factory=dict)
    leaving: bool = False
    rejoins: int = 0
    started_at: float = 0.0
    # How the last process said its session ended (control.voice_ended): outcome, message.
    ended: tuple[str, str] | None = None
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
    def state(self) -> str:
        if self.error:
            return "failed"
        if self.proc is None:
            if self.leaving:
                return "leaving"
            if self.server_deadline is not None:
                return "waiting for server"
            return "rejoining" if self.rejoin_at is not None else "joining"
        return str(self.status.get("state", "connecting"))

    def fail(self, reason: str) -> None:
        """The session is over for good; status keeps saying why until a leave or a join."""
        self.error = reason
        self.join_deadline = self.rejoin_at = self.server_deadline = None
        self.session_id = self.token = self.endpoint = ""

    def summary(self) -> dict[str, Any]:
        s = self.status
        return {
            "guild": str(self.guild),
            "channel": str(self.channel),
            "state": self.state,
            "ping": s.get("ping_ms"),
            "packets": s.get("packets", 0),
            "late": s.get("late", 0),
            "jitter": s.get("jitter_p99_ms"),
            "rejoins": self.rejoins,
            "pid": None if self.proc is None else self.proc.pid,
            "error": self.error or None,
        }

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
        args = [
            sys.executable,
            "-m",
            "voiceworker",
            "--guild",
            str(self.guild),
            "--user",
            str(self.user_id),
            "--session",
            self.session_id,
            "--endpoint",
            self.endpoint,
            "--channel",
            str(self.channel),
            "--control",
            control,
            "--events",
            events,
            "--nice",
            str(options.nice),
            "--log-level",
            log_level,
        ]
        if ca_file:
            args += ["--ca-file", ca_file]
        if options.receive:
            args.append("--receive")
        # The voice token, not the bot's: a voice process never talks to the main gateway.
        env = {k: v for k, v in os.environ.items() if k != token_env}
        env["SHARDLINE_VOICE_TOKEN"] = self.token
        self.proc = await asyncio.create_subprocess_exec(
            *args, env=env, preexec_fn=preexec, start_new_session=True
        )
        self.started_at = time.monotonic()
        proc = self.proc

        async def watch() -> None:
            code = await proc.wait()
            if self.proc is proc:
                self.proc = None
            await on_exit(self, code)

        asyncio.get_running_loop().create_task(watch())

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
