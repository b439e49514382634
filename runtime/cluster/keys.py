"""Where a fleet keeps its state in Redis: every key under ``shardline:{fleet}:`` (the braces
make one Redis Cluster hash slot, so the fleet's scripts may touch several keys at once).
docs/cluster.md lists them for operators."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FleetKeys"]


@dataclass(frozen=True)
class FleetKeys:
    fleet: str
    # The generation of shards the shard keys belong to: "" for the fleet's first, "g{n}:"
    # for the n-th reshard's (two generations run side by side while the fleet reshards).
    space: str = ""

    @property
    def prefix(self) -> str:
        return f"shardline:{{{self.fleet}}}:"

    def identify_queue(self, bucket: int) -> str:
        """Sorted set: shards of this bucket waiting to identify, scored by shard id."""
        return f"{self.prefix}identify:{bucket}:queue"

    def identify_alive(self, bucket: int) -> str:
        """Hash: shard id -> when its wait expires (ms), renewed while its host polls."""
        return f"{self.prefix}identify:{bucket}:alive"

    def identify_next(self, bucket: int) -> str:
        """String: the earliest time (ms, Redis's clock) the bucket's next identify may go."""
        return f"{self.prefix}identify:{bucket}:next"

    @property
    def budget(self) -> str:
        """String: identifies left in the day's session_start_limit, for the whole fleet."""
        return f"{self.prefix}budget:remaining"

    @property
    def budget_resets_at(self) -> str:
        """String: when Discord resets the budget (ms since the epoch)."""
        return f"{self.prefix}budget:resets_at"

    def lease(self, shard: int) -> str:
        """String ``host|fence`` with a TTL: the host that owns the shard, and the fencing
        token of its hold (expires unless renewed)."""
        return f"{self.prefix}{self.space}shard:{shard}:lease"

    def session(self, shard: int) -> str:
        """String: the shard's checkpoint (JSON, ipc.checkpoint), written only by its owner."""
        return f"{self.prefix}{self.space}shard:{shard}:session"

    @property
    def hosts(self) -> str:
        """Hash: host name -> JSON {expires_ms, ...}: the fleet's live hosts (renewed)."""
        return f"{self.prefix}hosts"

    @property
    def fence(self) -> str:
        """String: the fleet's fencing counter; every new hold on a shard takes the next."""
        return f"{self.prefix}fence"

    @property
    def generation(self) -> str:
        """String: JSON {count, space, number}: the generation the fleet runs since its last
        reshard (absent: the first, its count from the configuration or Discord)."""
        return f"{self.prefix}generation"

    @property
    def generations(self) -> str:
        """String: a counter; each reshard's generation takes the next number."""
        return f"{self.prefix}generations"

    @property
    def reshard(self) -> str:
        """String: JSON of the reshard under way (runtime/cluster/reshard.py), if any."""
        return f"{self.prefix}reshard"

    @property
    def owner_token(self) -> str:
        """String: a digest of the bot token that owns this fleet name (never the token)."""
        return f"{self.prefix}token"
