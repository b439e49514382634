"""Shard ownership by lease, with fencing: each shard is held by one host for ``ttl`` unless
that host renews it; every new hold takes the next number of the fleet's fencing counter.

A host checks its hold (host and fence) right before each IDENTIFY or RESUME, and a
checkpoint is written only under the writer's hold, both in one Lua script each: a host that
lost its lease (paused, partitioned) and comes back can neither open a session another host
now owns nor overwrite that host's checkpoint. The fence makes "the same host, an older
hold" tell apart from "the current hold": a host that lost a shard and took it again does not
act on the first hold's behalf.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from ipc.checkpoint import Checkpoint, CheckpointError
from runtime.cluster.identify import answer
from runtime.cluster.keys import FleetKeys

__all__ = ["Hold", "LeaseTable", "Taken"]

T = TypeVar("T")

# KEYS: lease, fence. ARGV: host, ttl_ms. -> {1, fence} held (new or renewed), or
# {0, owner, pttl} another host holds it.
ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, '|', 1, true)
  local owner = string.sub(current, 1, sep - 1)
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
    return {1, tonumber(string.sub(current, sep + 1))}
  end
  return {0, owner, redis.call('PTTL', KEYS[1])}
end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. fence, 'PX', tonumber(ARGV[2]))
return {1, fence}
"""

# KEYS: leases... ARGV: ttl_ms, then one "host|fence" per key. -> for each hold that is
# gone, its index (1-based) and what the lease says now ("" when it lapsed and nobody took it).
RENEW = """
local lost = {}
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if current == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]))
  else
    table.insert(lost, i)
    table.insert(lost, current or '')
  end
end
return lost
"""

# KEYS: lease. ARGV: "host|fence". -> 1 while that hold is current.
CHECK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# KEYS: lease. ARGV: "host|fence". Let go of the shard (a clean handoff): 1 if it was ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: lease, session. ARGV: "host|fence", checkpoint JSON, ttl_ms. -> 1 written, 0 not ours.
WRITE_SESSION = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[3]))
return 1
"""


@dataclass(frozen=True)
class Hold:
    """This host's hold on a shard: valid while the lease still says ``host|fence``."""

    shard: int
    host: str
    fence: int

    @property
    def value(self) -> str:
        return f"{self.host}|{self.fence}"


@dataclass(frozen=True)
class Taken:
    """Another host holds the shard, for ``ttl`` more seconds unless it renews."""

    shard: int
    owner: str
    ttl: float


class LeaseTable:
    """The fleet's shard leases as seen from one host."""

    def __init__(
        self,
        redis: Any,
        keys: FleetKeys,
        host: str,
        ttl: float,
        *,
        session_ttl: float = 3600.0,
        where: str = "Redis",
    ) -> None:
        if "|" in host:
            raise ValueError(f"a host name may not contain '|': {host!r}")
        self.redis = redis
        self.keys = keys
        self.host = host
        self.ttl_ms = int(ttl * 1000)
        self.session_ttl_ms = int(session_ttl * 1000)
        self.where = where
        self._acquire = redis.register_script(ACQUIRE)
        self._renew = redis.register_script(RENEW)
        self._check = redis.register_script(CHECK)
        self._release = redis.register_script(RELEASE)
        self._write = redis.register_script(WRITE_SESSION)

    async def _call(self, call: Awaitable[T]) -> T:
        consequence = ": shard leases cannot be taken or checked until it answers"
        return await answer(call, self.where, consequence)

    async def acquire(self, shard: int) -> Hold | Taken:
        """Take the shard if nobody holds it (or renew it if we do)."""
        reply = await self._call(
            self._acquire(
                keys=[self.keys.lease(shard), self.keys.fence], args=[self.host, self.ttl_ms]
            )
        )
        if int(reply[0]) == 1:
            return Hold(shard, self.host, int(reply[1]))
        owner = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        return Taken(shard, owner, max(0, int(reply[2])) / 1000)

    async def renew(self, holds: list[Hold]) -> list[tuple[Hold, str]]:
        """Extend every hold; returns the ones that are gone, each with the host that holds
        the shard now ("" when the lease lapsed and nobody took it: Redis was away, or this
        host was, but no other host runs the shard)."""
        if not holds:
            return []
        flat = await self._call(
            self._renew(
                keys=[self.keys.lease(h.shard) for h in holds],
                args=[self.ttl_ms, *(h.value for h in holds)],
            )
        )
        lost = []
        for index, current in zip(flat[::2], flat[1::2], strict=True):
            text = current.decode("utf-8", "replace") if isinstance(current, bytes) else ""
            lost.append((holds[int(index) - 1], text.rsplit("|", 1)[0] if text else ""))
        return lost

    async def still_holds(self, hold: Hold) -> bool:
        """The fencing check before an IDENTIFY or RESUME: is this hold still current?"""
        result = await self._call(
            self._check(keys=[self.keys.lease(hold.shard)], args=[hold.value])
        )
        return int(result) == 1

    async def release(self, hold: Hold) -> bool:
        """Hand the shard over (after closing it resumably and writing its checkpoint)."""
        result = await self._call(
            self._release(keys=[self.keys.lease(hold.shard)], args=[hold.value])
        )
        return int(result) == 1

    async def owners(self, shard_count: int) -> dict[int, str]:
        """Who holds which shard now (free shards are absent): the view shares are planned
        on. One MGET for the whole fleet."""
        keys = [self.keys.lease(s) for s in range(shard_count)]
        values = await self._call(self.redis.mget(keys)) if keys else []
        owners: dict[int, str] = {}
        for shard, value in enumerate(values):
            if isinstance(value, bytes) and b"|" in value:
                owners[shard] = value.rsplit(b"|", 1)[0].decode("utf-8", "replace")
        return owners

    async def owner(self, shard: int) -> str:
        """The host that holds ``shard`` now ("" when nobody does)."""
        value = await self._call(self.redis.get(self.keys.lease(shard)))
        if isinstance(value, bytes) and b"|" in value:
            return value.rsplit(b"|", 1)[0].decode("utf-8", "replace")
        return ""

    async def save_session(self, hold: Hold, checkpoint: Checkpoint) -> bool:
        """Write the shard's checkpoint under ``hold``; False (nothing written) when the hold
        is no longer current."""
        result = await self._call(
            self._write(
                keys=[self.keys.lease(hold.shard), self.keys.session(hold.shard)],
                args=[hold.value, orjson.dumps(checkpoint.to_json()), self.session_ttl_ms],
            )
        )
        return int(result) == 1

    async def load_session(self, shard: int, shard_count: int) -> Checkpoint | None:
        """The shard's checkpoint, if one is kept and usable for this shard count (a bad one
        is ignored: the shard identifies afresh)."""
        raw = await self._call(self.redis.get(self.keys.session(shard)))
        if raw is None:
            return None
        try:
            checkpoint = Checkpoint.from_json(orjson.loads(raw))
        except (CheckpointError, orjson.JSONDecodeError, TypeError):
            return None  # a checkpoint we would not write: every field is outside input
        if checkpoint.shard != shard or checkpoint.shard_count != shard_count:
            return None
        return checkpoint
