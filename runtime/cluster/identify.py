"""One identify schedule for a whole fleet, in Redis: ``bucket = shard_id % max_concurrency``,
one IDENTIFY per bucket per interval across every host, lower shard ids first, and one
daily budget for the fleet. Each decision is a Lua script, so it is atomic: two hosts can
never take the same slot, and time is Redis's own clock (hosts' clocks may differ).

A host calls :meth:`FleetIdentifySchedule.wait` for each shard it wants to identify: the
shard joins its bucket's queue and the host asks again (renewing its place) until the
script grants the slot. A host that dies stops renewing, and its shards' places lapse, so a
dead host never blocks a bucket for longer than ``place_ttl``.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import RedisError

from runtime.cluster.keys import FleetKeys
from runtime.scheduler import GENERATION_SPAN

__all__ = [
    "MARK_SENT",
    "TRY_GRANT",
    "ClusterUnavailable",
    "FleetIdentifySchedule",
    "Grant",
    "GrantOutcome",
    "answer",
]

T = TypeVar("T")


class ClusterUnavailable(Exception):
    """Redis did not answer (or refused us): no identify may be granted until it does."""


async def answer(call: Awaitable[T], where: str, consequence: str) -> T:
    """``await call``, a Redis error turned into ClusterUnavailable naming the server
    (``where``, its URL redacted) and what cannot happen meanwhile."""
    try:
        return await call
    except RedisError as exc:
        raise ClusterUnavailable(
            f"{where} is unreachable or refused the request ({exc}){consequence}"
        ) from None


# KEYS: queue, alive, next, budget. ARGV: shard, interval_ms, place_ttl_ms.
# Returns {outcome, wait_ms, budget_left}: outcome 1 granted, 0 wait, -1 budget spent.
TRY_GRANT = """
local queue, alive, nextkey, budgetkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local shard, interval, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', queue, 'NX', tonumber(shard), shard)
redis.call('HSET', alive, shard, now + ttl)
while true do
  local head = redis.call('ZRANGE', queue, 0, 0)[1]
  if head == nil then break end
  local expires = tonumber(redis.call('HGET', alive, head) or '0')
  if expires >= now then break end
  redis.call('ZREM', queue, head)
  redis.call('HDEL', alive, head)
end
local head = redis.call('ZRANGE', queue, 0, 0)[1]
local budget = tonumber(redis.call('GET', budgetkey) or '-1')
if head ~= shard then
  return {0, 250, budget}
end
local nextfree = tonumber(redis.call('GET', nextkey) or '0')
if now < nextfree then
  return {0, nextfree - now, budget}
end
if budget == 0 then
  return {-1, 0, 0}
end
redis.call('SET', nextkey, now + interval, 'PX', interval * 4)
redis.call('ZREM', queue, shard)
redis.call('HDEL', alive, shard)
if budget > 0 then
  budget = redis.call('DECR', budgetkey)
end
return {1, 0, budget}
"""

# KEYS: next. ARGV: interval_ms. The IDENTIFY went out now: the bucket's next one waits a
# full interval from the send, not from the grant (a busy shard sends a little later).
MARK_SENT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local want = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if want > current then
  redis.call('SET', KEYS[1], want, 'PX', tonumber(ARGV[1]) * 4)
end
return want
"""

# KEYS: queue, alive. ARGV: place_ttl_ms, shard... Shards take their places in the queue
# without asking yet: a host registers all it will identify first, so that lower ids go first
# across hosts that start together.
JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'NX', tonumber(ARGV[i]), ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], now + tonumber(ARGV[1]))
end
return #ARGV - 1
"""

# KEYS: queue, alive. ARGV: shard. The shard no longer waits (it went away).
LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


class GrantOutcome(enum.Enum):
    GRANTED = "granted"
    WAIT = "wait"
    BUDGET_SPENT = "budget spent"


@dataclass(frozen=True)
class Grant:
    outcome: GrantOutcome
    wait: float  # seconds until asking again makes sense
    budget_left: int | None  # the fleet's identifies left (None: not known yet)


class FleetIdentifySchedule:
    """The fleet's identify slots, through ``redis`` (a ``redis.asyncio.Redis``)."""

    def __init__(
        self,
        redis: Any,
        keys: FleetKeys,
        max_concurrency: int,
        *,
        interval: float = 5.0,
        margin: float = 0.25,
        place_ttl: float = 5.0,
        where: str = "Redis",
        generation: int = 0,
    ) -> None:
        self.redis = redis
        self.where = where  # how errors name the server (a redacted URL)
        self.keys = keys
        self.max_concurrency = max(1, max_concurrency)
        # While the fleet reshards, two generations share the buckets: a shard's place in a
        # queue is its id offset by a multiple of max_concurrency per generation, which
        # keeps its bucket and tells it apart from the other generation's shard of that id.
        self.offset = generation * self.max_concurrency * GENERATION_SPAN
        self.interval_ms = int((interval + margin) * 1000)
        self.place_ttl_ms = int(place_ttl * 1000)
        self._try = redis.register_script(TRY_GRANT)
        self._sent = redis.register_script(MARK_SENT)
        self._leave = redis.register_script(LEAVE)
        self._join = redis.register_script(JOIN)

    async def _call(self, call: Awaitable[T]) -> T:
        consequence = ": no shard of the fleet identifies until it answers (resumes go on)"
        return await answer(call, self.where, consequence)

    def _bucket_keys(self, shard: int) -> list[str]:
        bucket = shard % self.max_concurrency  # the same with the offset (a multiple)
        k = self.keys
        return [k.identify_queue(bucket), k.identify_alive(bucket), k.identify_next(bucket)]

    async def join(self, shards: list[int]) -> None:
        """Put ``shards`` in their buckets' queues before any of them asks (see JOIN)."""
        by_bucket: dict[int, list[int]] = {}
        for shard in shards:
            by_bucket.setdefault(shard % self.max_concurrency, []).append(shard + self.offset)
        for bucket, members in by_bucket.items():
            k = self.keys
            await self._call(
                self._join(
                    keys=[k.identify_queue(bucket), k.identify_alive(bucket)],
                    args=[self.place_ttl_ms, *map(str, members)],
                )
            )

    async def try_grant(self, shard: int) -> Grant:
        """Ask once for ``shard``'s slot (joining or renewing its place in the queue)."""
        outcome, wait_ms, budget = await self._call(
            self._try(
                keys=[*self._bucket_keys(shard), self.keys.budget],
                args=[str(shard + self.offset), self.interval_ms, self.place_ttl_ms],
            )
        )
        budget_left = None if int(budget) < 0 else int(budget)
        if int(outcome) == 1:
            return Grant(GrantOutcome.GRANTED, 0.0, budget_left)
        if int(outcome) == -1:
            return Grant(GrantOutcome.BUDGET_SPENT, 0.0, 0)
        return Grant(GrantOutcome.WAIT, max(0.01, int(wait_ms) / 1000), budget_left)

    async def sent(self, shard: int) -> None:
        """The shard's IDENTIFY went out: its bucket waits a full interval from now."""
        await self._call(self._sent(keys=[self._bucket_keys(shard)[2]], args=[self.interval_ms]))

    async def leave(self, shard: int) -> None:
        """The shard stopped waiting (it went away, or identifies elsewhere)."""
        await self._call(
            self._leave(keys=self._bucket_keys(shard)[:2], args=[str(shard + self.offset)])
        )

    async def set_budget(self, remaining: int, resets_at_ms: int) -> None:
        """Discord's ``session_start_limit`` as fetched: the fleet's counter takes it."""

        async def write() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.budget, max(0, remaining))
                pipe.set(self.keys.budget_resets_at, resets_at_ms)
                await pipe.execute()

        await self._call(write())

    async def budget_and_reset(self) -> tuple[int | None, int | None]:
        """The fleet's identifies left and when Discord resets them (ms), if known."""
        left, resets = await self._call(
            self.redis.mget([self.keys.budget, self.keys.budget_resets_at])
        )
        return (
            None if left is None else int(left),
            None if resets is None else int(resets),
        )

    async def budget(self) -> int | None:
        value = await self._call(self.redis.get(self.keys.budget))
        return None if value is None else int(value)
