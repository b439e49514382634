"""The bot's application processes (``[[apps]]``): each runs ``python -m ipc.app`` with the
supervisor's endpoints and never the token, and is restarted by the one restart policy when
it exits."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ipc.status import AppRecord
from runtime.config import Config
from runtime.procs import end_process
from runtime.restartpolicy import CrashHistory, Exit, describe, sleep_unless

__all__ = ["AppFleet", "AppWorker"]

log = logging.getLogger("shardline.supervisor")


@dataclass
class AppWorker:
    """One process of an ``[[apps]]`` entry."""

    module: str
    index: int
    count: int
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    history: CrashHistory = field(default_factory=CrashHistory)
    last_exit: str = ""
    started_at: float = 0.0
    given_up: str = ""
    retired: bool = False  # another host runs this process now: never restarted here
    deploys: int = 0  # times a deploy replaced it

    @property
    def slot(self) -> tuple[str, int, int]:
        return (self.module, self.index, self.count)

    @property
    def state(self) -> str:
        if self.given_up:
            return "failed"
        return "running" if self.proc is not None else "restarting"

    def record(self) -> AppRecord:
        return AppRecord(
            module=self.module,
            index=self.index,
            state=self.state,
            restarts=self.restarts,
            pid=self.proc.pid if self.proc else None,
        )


class AppFleet:
    def __init__(
        self,
        config: Config,
        env: dict[str, str],
        *,
        python: str = sys.executable,
        preexec: Callable[[], None] | None = None,
        placed: bool = False,
    ) -> None:
        """``placed``: the fleet decides which processes run here (``add``/``retire``);
        none start by themselves."""
        self.config = config
        self.python = python
        self.preexec = preexec
        # Applications get the endpoints, never the bot's token.
        self.env = {k: v for k, v in {**os.environ, **env}.items()}
        self.env.pop(config.discord.token_env, None)
        self.apps = (
            []
            if placed
            else [
                AppWorker(app.module, index, app.processes)
                for app in config.apps
                for index in range(app.processes)
            ]
        )
        self.stopping = asyncio.Event()

    def add(self, slot: tuple[str, int, int]) -> AppWorker:
        """Run this process here from now on (the caller runs :meth:`keep_alive` for it)."""
        app = AppWorker(*slot)
        self.apps.append(app)
        return app

    async def retire(self, app: AppWorker) -> None:
        """Stop this process for good (another host runs it now)."""
        app.retired = True
        proc = app.proc
        if proc is not None:
            await end_process(proc)
        if app in self.apps:
            self.apps.remove(app)

    async def keep_alive(self, app: AppWorker) -> None:
        """Run one app process; restart it as the restart policy says when it exits."""
        restart = self.config.restart
        while not self.stopping.is_set() and not app.retired:
            if app.proc is None:
                app.proc = await self._spawn(app)
                app.started_at = time.monotonic()
            proc = app.proc
            try:
                code = await proc.wait()
            except asyncio.CancelledError:
                await end_process(proc)
                if app.proc is not proc and app.proc is not None:
                    await end_process(app.proc)
                raise
            if app.proc is not proc:
                continue  # replaced by a deploy: the new process runs on
            app.proc = None
            now = time.monotonic()
            decision = app.history.after_exit(
                # An app's exit statuses are its own: none means "never respawn" here.
                code if code in (0, 1) or code < 0 else 1,
                asked_to_stop=self.stopping.is_set() or app.retired,
                ran_for=now - app.started_at,
                now=now,
                restart=restart,
            )
            if decision.next is Exit.STOPPED:
                return
            app.last_exit = describe(code)
            if decision.next is Exit.GIVE_UP:
                app.given_up = decision.reason
                log.error(f"app {app.module}[{app.index}] {decision.reason}")
                return
            app.restarts += 1
            log.warning(
                f"app {app.module}[{app.index}] {app.last_exit}; "
                f"restarting in {decision.delay:.1f}s"
            )
            await sleep_unless(self.stopping, decision.delay)

    async def _spawn(self, app: AppWorker) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            self.python,
            "-m",
            "ipc.app",
            "--module",
            app.module,
            "--index",
            str(app.index),
            "--count",
            str(app.count),
            env=self.env,
            preexec_fn=self.preexec,
            start_new_session=True,
        )

    async def replace(
        self, app: AppWorker, subscribed: Callable[[int], bool], timeout: float = 30.0
    ) -> str:
        """A deploy's step: start a fresh process for ``app`` (the module imported anew),
        wait until it is subscribed to the bus (``subscribed(pid)``), then stop the old one.
        Make before break: no event goes unhandled. Returns "" or why it was not replaced
        (the old process runs on)."""
        old = app.proc
        if old is None or app.retired or self.stopping.is_set():
            return "it is not running"
        new = await self._spawn(app)
        deadline = time.monotonic() + timeout
        while not subscribed(new.pid):
            if self.stopping.is_set():  # the fleet stops meanwhile: the old one goes with it
                await end_process(new)
                return "the supervisor is stopping"
            if new.returncode is not None or time.monotonic() > deadline:
                await end_process(new)
                why = (
                    f"the new process exited ({describe(new.returncode)})"
                    if new.returncode is not None
                    else f"the new process did not subscribe within {timeout:.0f}s"
                )
                log.error(f"deploy: app {app.module}[{app.index}] not replaced: {why}")
                return why
            await asyncio.sleep(0.05)  # polling the bus's subscriber list
        app.proc, app.started_at = new, time.monotonic()
        await end_process(old)
        app.deploys += 1
        return ""

    async def shutdown(self) -> None:
        self.stopping.set()
        for app in self.apps:
            if app.proc is not None and app.proc.returncode is None:
                app.proc.terminate()
        for app in self.apps:
            if app.proc is not None:
                await end_process(app.proc)

    def records(self) -> list[AppRecord]:
        return [app.record() for app in self.apps]
