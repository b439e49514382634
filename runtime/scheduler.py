"""Identify permits, sans-I/O: which shard may IDENTIFY when.

Discord's rule: ``max_concurrency`` buckets, ``bucket = shard_id % max_concurrency``, one
identify per bucket per 5 s; buckets run in parallel, and within a bucket shards go in id
order. Every grant spends one of the day's ``session_start_limit.remaining``; with none left,
nothing is granted (running shards are not touched) until :meth:`refill` says the day reset.
"""

from __future__ import annotations

import heapq
import math

__all__ = [
    "IdentifyScheduler",
    "ScheduleView",
    "startup_seconds",
]


def startup_seconds(shards: int, max_concurrency: int, interval: float = 5.0) -> float:
    """The fastest Discord allows ``shards`` fresh identifies: the last bucket round starts
    ``(ceil(shards / max_concurrency) - 1) x interval`` after the first."""
    return max(0, math.ceil(shards / max(1, max_concurrency)) - 1) * interval


class IdentifyScheduler:
    def __init__(self, max_concurrency: int, remaining: int, interval: float = 5.0) -> None:
        self.max_concurrency = max(1, max_concurrency)
        self.remaining = remaining
        self.interval = interval
        self._pending: list[list[int]] = [[] for _ in range(self.max_concurrency)]
        self._next_at: list[float] = [0.0] * self.max_concurrency
        self.granted = 0
        self._expected: set[int] = set()
        self._hold_until = 0.0

    def expect(self, shard_ids: list[int], now: float, grace: float = 3.0) -> None:
        """Shards about to ask: within a bucket, a lower id that has not asked yet is waited
        for (up to ``grace`` seconds), so that shards identify in id order."""
        self._expected = set(shard_ids)
        self._hold_until = now + grace

    def request(self, shard_id: int) -> None:
        """A shard asks to identify (again). Duplicate requests are merged."""
        bucket = self._pending[shard_id % self.max_concurrency]
        self._expected.discard(shard_id)
        if shard_id not in bucket:
            heapq.heappush(bucket, shard_id)

    def sent(self, shard_id: int, now: float) -> None:
        """The shard's IDENTIFY went out (reported at ``now``, a little after): its bucket's
        next identify waits a full interval from then, whenever the permit was granted."""
        index = shard_id % self.max_concurrency
        self._next_at[index] = max(self._next_at[index], now + self.interval + self._margin())

    def _margin(self) -> float:
        # A margin for the permit's trip to the shard and the identify's to Discord: two
        # identifies granted exactly `interval` apart can arrive closer than that. (0.25 s:
        # under a startup's load the trip varied by more than 50 ms, and a refused identify
        # costs the shard a 1-5 s wait and a later round.)
        return max(0.25, self.interval * 0.02)

    def cancel(self, shard_id: int) -> None:
        """The shard went away before its turn."""
        bucket = self._pending[shard_id % self.max_concurrency]
        if shard_id in bucket:
            bucket.remove(shard_id)
            heapq.heapify(bucket)

    def poll(self, now: float) -> list[int]:
        """Shards that may identify now (at most one per bucket); none while the day's
        budget is spent (:attr:`starved` then says shards are waiting for it)."""
        grants = []
        for index, bucket in enumerate(self._pending):
            if bucket and now >= self._next_at[index] and not self._held(bucket[0], now):
                if self.remaining <= 0:
                    continue  # an identify now would get the bot's token reset
                grants.append(heapq.heappop(bucket))
                self._next_at[index] = now + self.interval + self._margin()
                self.remaining -= 1
                self.granted += 1
        return grants

    def _held(self, shard_id: int, now: float) -> bool:
        if now >= self._hold_until:
            return False
        return any(
            other < shard_id and other % self.max_concurrency == shard_id % self.max_concurrency
            for other in self._expected
        )

    @property
    def starved(self) -> bool:
        """Shards wait to identify and the day's budget is spent."""
        return self.remaining <= 0 and self.waiting > 0

    def refill(self, remaining: int) -> None:
        """Discord's ``session_start_limit.remaining``, fetched again (the day may have reset)."""
        self.remaining = max(0, remaining)

    def next_deadline(self) -> float | None:
        if self.remaining <= 0:
            return None  # nothing can be granted before a refill
        times = [self._next_at[i] for i, bucket in enumerate(self._pending) if bucket]
        return min(times) if times else None

    @property
    def waiting(self) -> int:
        return sum(len(b) for b in self._pending)


class ScheduleView:
    """One generation of shards' window on the one identify schedule (a reshard runs two
    generations with the same shard ids): its ids are offset by a multiple of
    ``max_concurrency`` (so each keeps its bucket), and each generation gets its own grants."""

    def __init__(self, scheduler: IdentifyScheduler, generation: int, mailbox: list[int]) -> None:
        self.scheduler = scheduler
        self.offset = generation * scheduler.max_concurrency * GENERATION_SPAN
        self._mailbox = mailbox  # grants polled by one view that belong to another

    def request(self, shard_id: int) -> None:
        self.scheduler.request(shard_id + self.offset)

    def sent(self, shard_id: int, now: float) -> None:
        self.scheduler.sent(shard_id + self.offset, now)

    def cancel(self, shard_id: int) -> None:
        self.scheduler.cancel(shard_id + self.offset)

    def close(self, shard_ids: list[int]) -> None:
        """The generation is gone: its waiting shards leave the schedule, and grants no one
        will collect are dropped."""
        for shard in shard_ids:
            self.cancel(shard)
        low, high = self.offset, self.offset + self.scheduler.max_concurrency * GENERATION_SPAN
        kept = [key for key in self._mailbox if not low <= key < high]
        self.scheduler.remaining += len(self._mailbox) - len(kept)  # never sent: not spent
        self._mailbox[:] = kept

    def poll(self, now: float) -> list[int]:
        self._mailbox.extend(self.scheduler.poll(now))
        low, high = self.offset, self.offset + self.scheduler.max_concurrency * GENERATION_SPAN
        mine = [key for key in self._mailbox if low <= key < high]
        self._mailbox[:] = [key for key in self._mailbox if not low <= key < high]
        return [key - self.offset for key in mine]


GENERATION_SPAN = 1 << 20  # above any shard id (a shard count is at most 65,536)
