"""A shard runner against the in-process emulator, with a publisher that records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from emulator import DEFAULT_TOKEN, Emulator, EmulatorConfig, GatewayRules, WorldConfig
from ipc.errors import ErrorEvent
from ipc.links import NullPublisher
from ipc.messages import Event
from shards.loop import LocalIdentifyBucket, ShardRunner
from shards.protocol import ShardSettings


class RecordingPublisher(NullPublisher):
    """Keeps every dispatch (t, seq) and event; wakes waiters on each."""

    def __init__(self) -> None:
        super().__init__("shard:0")
        self.dispatches: list[tuple[str, int | None, str | None]] = []
        self.events: list[Event] = []
        self.full = False
        self._changed = asyncio.Condition()

    def dispatch(self, t: str, raw: bytes, seq: int | None, session: str | None) -> bool:
        if self.full:  # a bus that takes nothing now (its queue is full)
            return False
        self.dispatches.append((t, seq, session))
        self._poke()
        return True

    def event(self, event: Event) -> None:
        self.events.append(event)
        self._poke()

    def _poke(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    def errors(self, cls: type[ErrorEvent] = ErrorEvent) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    def seqs(self, t: str | None = None) -> list[int]:
        return [s for (tt, s, _) in self.dispatches if s is not None and (t is None or tt == t)]


def emulator(guilds: int = 4, **rules: Any) -> Emulator:
    rules.setdefault("identify_interval", 0.0)
    return Emulator(
        EmulatorConfig(rules=GatewayRules(**rules), world=WorldConfig(guilds=guilds, large_share=0))
    )


class DrivenClock:
    """A loop clock the test moves: deadlines come when the test says, not after real
    seconds (call ``runner.wake()`` after moving it)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def running_shard(
    emu: Emulator,
    *,
    jitter: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    **settings: Any,
) -> AsyncIterator[tuple[ShardRunner, RecordingPublisher]]:
    """Start a ShardRunner for shard 0/1 against ``emu``; stop it on exit."""
    values: dict[str, Any] = dict(
        token=DEFAULT_TOKEN,
        shard_id=0,
        shard_count=1,
        intents=513,
        backoff_base=0.05,
        min_heartbeat_interval=0.05,  # the emulator heartbeats fast to keep tests short
    )
    values.update(settings)
    publisher = RecordingPublisher()
    runner = ShardRunner(
        ShardSettings(**values),
        emu.gateway_url,
        publisher=publisher,
        identify_bucket=LocalIdentifyBucket(0.0),
        clock=clock,
    )
    if jitter is not None:
        runner.protocol.rng = lambda: jitter
    task = asyncio.create_task(runner.run())
    try:
        yield runner, publisher
    finally:
        runner.stop()
        await asyncio.wait_for(task, 10)


async def until_ready(publisher: RecordingPublisher, count: int = 1) -> None:
    await publisher.wait_until(
        lambda: len([1 for t, _, _ in publisher.dispatches if t in ("READY", "RESUMED")]) >= count
    )


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition that no notification covers (the runner's own state), checking
    it each time the event loop has run the other tasks; fails after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)
