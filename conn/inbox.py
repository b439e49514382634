"""The one place a connection loop waits: items arrive here (frames, closes, commands, what
the process asks for) and the loop sleeps until the first item or its next deadline,
whichever comes first. Deadlines are times of the loop's clock, so a test drives them."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the loop, while it sleeps

    @staticmethod
    def _wake(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    def put(self, item: T) -> None:
        """From anywhere on the loop's thread (a transport callback, a command reader)."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._wake(waiter)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def take(self) -> T:
        """The oldest item (IndexError when empty)."""
        return self._items.popleft()

    def clear(self) -> None:
        self._items.clear()

    async def wait(self, until: float | None) -> None:
        """Return when an item is waiting or at ``until`` (None: only for an item). An item
        already waiting returns at once; a deadline already past still yields once, so the
        transport's callbacks run."""
        if self._items:
            return
        delay = None if until is None else until - self.clock()
        if delay is not None and delay <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        if delay is None:
            try:
                await waiter
            finally:
                self._waiter = None
            return
        timer = loop.call_later(delay, self._wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()
