"""Which shard a command goes to: pure functions of the request and the fleet plan."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ipc.fields import check_snowflake
from ipc.messages import REGISTRY, GatewayCommand
from ipc.requests import VIA, RawRequest, RestartShards, VoiceRequest

__all__ = ["describe_ranges", "forward_target", "route_command", "shard_of_guild"]


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


def forward_target(
    request: RawRequest,
    shard_count: int,
    local: Collection[int],
    owners: Mapping[int, str],
    me: str,
    served_by: Mapping[str, str],
    served_here: bool,
    voice_here: Collection[int] = (),
    voice_at: Mapping[int, str] | None = None,
) -> tuple[str, str, int | None] | None:
    """In a multi-host fleet: the other host that must answer ``request`` as this host last
    saw the fleet ("" when it did not know), why, and the shard it is for (None for a served
    command); None to answer it here. Gateway commands go to the host that runs the shard of
    their guild (or ``options.shard``); voice commands to the host that runs the guild's voice
    session (``voice_here``: this host's; ``voice_at``: the others', guild -> host), else the
    one that runs its shard; a shard's restart to the host that runs it; a custom command
    nobody here serves to a host where an application serves it. A request another host
    forwarded (``options.via``) is never forwarded again."""
    if VIA in request.options:
        return None
    cls = REGISTRY.command(request.type_name)
    if cls is None or not (issubclass(cls, GatewayCommand | VoiceRequest) or cls is RestartShards):
        if served_here or cls is not None:
            return None
        host = served_by.get(request.type_name)
        if host is None or host == me:
            return None
        return host, f"{request.type_name} is served by an application on host {host}", None
    body = request.body
    if issubclass(cls, VoiceRequest) and isinstance(body, dict):
        guild: Any = body.get("guild_id")
        if check_snowflake(guild) is None:
            guild_id = int(guild)
            if guild_id in voice_here:
                return None
            host = (voice_at or {}).get(guild_id)
            if host is not None and host != me:
                return host, f"the voice session of guild {guild_id} runs on host {host}", None
    if cls is RestartShards:
        shard = body.get("shard") if isinstance(body, dict) else None
        if type(shard) is not int:
            return None
    else:
        routed = route_command(request.options, body, shard_count, range(shard_count))
        if isinstance(routed, str):
            return None  # answered here, with the reason it cannot be routed
        shard = routed
    if shard in local:
        return None
    owner = owners.get(shard, "")
    if owner == me:
        owner = ""  # a turn-old view: asked again when the request is forwarded
    return owner, f"shard {shard} runs on host {owner or '(unknown)'}", shard


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
