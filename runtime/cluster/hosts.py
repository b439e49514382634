"""The fleet's live hosts: each host's supervisor registers itself and renews the entry;
an entry not renewed within the TTL is gone (the host is dead or cut off), and the next
reader prunes it. Redis's clock decides, in one Lua script."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson

from runtime.cluster.identify import answer
from runtime.cluster.keys import FleetKeys

__all__ = ["HostRegistry"]

T = TypeVar("T")

# KEYS: hosts. ARGV: host, ttl_ms, info JSON (an object). Registers or renews; returns
# Redis's time (ms) then the live hosts as a flat list [now, name, json, name, json...],
# expired entries removed.
BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local info = cjson.decode(ARGV[3])
info['expires_ms'] = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(info))
local out = {now}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, entry = pcall(cjson.decode, all[i + 1])
  if ok and type(entry) == 'table' and tonumber(entry['expires_ms']) and
      tonumber(entry['expires_ms']) >= now then
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
"""


class HostRegistry:
    def __init__(
        self, redis: Any, keys: FleetKeys, host: str, ttl: float, *, where: str = "Redis"
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.host = host
        self.ttl_ms = int(ttl * 1000)
        self.where = where
        self._beat = redis.register_script(BEAT)
        self.now_ms = 0  # Redis's clock at the last beat (entries' expiries are in it)

    async def _call(self, call: Awaitable[T]) -> T:
        return await answer(call, self.where, ": the fleet's hosts cannot be seen meanwhile")

    async def beat(self, info: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Register or renew this host (with ``info``: its endpoints, pid...); returns every
        live host's info by name, this one included."""
        flat = await self._call(
            self._beat(
                keys=[self.keys.hosts], args=[self.host, self.ttl_ms, orjson.dumps(info or {})]
            )
        )
        self.now_ms = int(flat[0])
        entries = flat[1:]
        live: dict[str, dict[str, Any]] = {}
        for name, raw in zip(entries[::2], entries[1::2], strict=True):
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                live[name.decode("utf-8", "replace")] = entry
        return live

    async def leave(self) -> None:
        """A clean stop: the others need not wait for the TTL to rebalance."""
        await self._call(self.redis.hdel(self.keys.hosts, self.host))
