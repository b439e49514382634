"""Which shard a command goes to: pure functions of the request and the fleet plan."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ipc.fields import check_snowflake

__all__ = ["describe_ranges", "route_command", "shard_of_guild"]


def shard_of_guild(guild_id: int, shard_count: int) -> int:
    """Discord's rule: ``(guild_id >> 22) % shard_count``."""
    return (guild_id >> 22) % shard_count


def route_command(
    options: dict[str, Any], body: Any, shard_count: int, owned: Collection[int]
) -> int | str:
    """The shard a gateway command goes to, or why there is none. ``options.shard`` wins;
    else ``options.guild_id``; else the command's own ``guild_id``. A guild id is a
    snowflake as a string or an integer."""
    if "shard" in options:
        shard = options["shard"]
        if type(shard) is not int:
            return f"options.shard must be a shard id, not {_cut(shard)}"
    else:
        guild = options.get("guild_id")
        if guild is None and isinstance(body, dict):
            guild = body.get("guild_id")
        if guild is None:
            return "the command needs a guild_id (or a shard) to be routed"
        problem = check_snowflake(guild)
        if problem is not None:
            return f"guild_id {problem}"
        shard = shard_of_guild(int(guild), shard_count)
    if shard not in owned:
        ids = sorted(owned)
        return f"shard {shard} is not run by this host (it runs {describe_ranges(ids)})"
    return shard


def describe_ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    if not ids:
        return "none"
    out: list[str] = []
    start = prev = ids[0]
    for i in [*ids[1:], -1]:
        if i == prev + 1:
            prev = i
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = i
    return ",".join(out)


def _cut(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
