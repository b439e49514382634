"""The status table ``shardline status`` and ``shardline demo`` print, from the one fleet
status record (:class:`ipc.status.FleetStatus`)."""

from __future__ import annotations

import time

from ipc.status import FleetStatus

__all__ = ["format_status"]


def format_status(status: FleetStatus) -> str:
    """One row per shard (with its host, in a multi-host fleet), the hosts and the fleet's
    budget, the bus's losses, then the voice sessions."""
    clustered = bool(status.hosts) or bool(status.cluster_problem)
    head = (
        f"{'shard':>5}  {'state':<12}{'latency':>9}{'guilds':>8}{'events/s':>10}{'seq':>10}"
        f"{'restarts':>10}{'uptime':>9}"
    )
    if clustered:
        head += "  host"
    lines = [head]
    for shard in status.shards:
        latency = "-" if shard.latency is None else f"{shard.latency:.1f}ms"
        seq = "-" if shard.seq is None else str(shard.seq)
        row = (
            f"{shard.id:>5}  {shard.state:<12}{latency:>9}{shard.guilds:>8}"
            f"{shard.events_per_second:>10.1f}{seq:>10}{shard.restarts:>10}"
            f"{shard.uptime:>8.0f}s"
        )
        lines.append(row + (f"  {shard.host}" if clustered else ""))
    if clustered:
        lines.extend(_fleet_lines(status))
    bus = status.bus
    lines.append(
        f"bus: {bus.shard_drops} dropped by shards at the high-water mark, "
        f"{bus.subscriber_gaps} missed by {bus.subscribers_reporting} reporting subscribers"
    )
    lines.append(f"voice sessions: {len(status.voice)}")
    for v in status.voice:
        ping = "-" if v.ping is None else f"{v.ping:.1f}ms"
        jitter = "-" if v.jitter is None else f"{v.jitter:.2f}ms"
        lines.append(
            f"  guild {v.guild}: {v.state}, ping {ping}, packets {v.packets}, "
            f"late {v.late}, jitter p99 {jitter}"
        )
    return "\n".join(lines)


def _fleet_lines(status: FleetStatus) -> list[str]:
    lines = []
    if status.cluster_problem:
        lines.append(f"fleet: {status.cluster_problem}")
    reshard = status.reshard
    if reshard is not None:
        why = f": {reshard.problem}" if reshard.problem else ""
        lines.append(
            f"reshard: {reshard.current} -> {reshard.target} shards, {reshard.ready} ready, "
            f"{reshard.state}{why}"
        )
    budget = status.budget
    if budget is not None and budget.remaining is not None:
        resets = ""
        if budget.resets_at is not None:
            resets = time.strftime(", resets %Y-%m-%d %H:%M UTC", time.gmtime(budget.resets_at))
        lines.append(f"fleet identify budget: {budget.remaining} left{resets}")
    for host in status.hosts:
        seen = "-" if host.lease_age is None else f"{host.lease_age:.1f}s ago"
        state = "reachable" if host.reachable else "UNREACHABLE"
        shards = _ranges(host.shards) or "none"
        lines.append(f"host {host.name}: {state}, renewed {seen}, shards {shards}")
    return lines


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts: list[str] = []
    for shard in sorted(ids):
        if parts and "-" not in parts[-1].split(",")[-1] and int(parts[-1]) == shard - 1:
            parts[-1] = f"{shard - 1}-{shard}"
        elif parts and "-" in parts[-1] and int(parts[-1].split("-")[1]) == shard - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{shard}"
        else:
            parts.append(str(shard))
    return ",".join(parts)
