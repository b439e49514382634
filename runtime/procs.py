"""Ending a child process: ask, wait, then insist. The one way the supervisor stops a
worker or an application."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Protocol

__all__ = ["end_process"]


class Child(Protocol):
    @property
    def returncode(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    async def wait(self) -> int: ...


async def end_process(
    proc: Child, grace: float = 5.0, *, ask: signal.Signals = signal.SIGTERM
) -> int:
    """Send ``ask`` (SIGTERM), wait up to ``grace`` seconds, then SIGKILL; returns the exit
    status. A process that already exited is only reaped."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(ask)
        try:
            return await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
    return await proc.wait()
