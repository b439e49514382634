"""The status table ``shardline status`` and ``shardline demo`` print, from the one fleet
status record (:class:`ipc.status.FleetStatus`)."""

from __future__ import annotations

from ipc.status import FleetStatus

__all__ = ["format_status"]


def format_status(status: FleetStatus) -> str:
    """One row per shard, the bus's losses, then the voice sessions."""
    head = (
        f"{'shard':>5}  {'state':<12}{'latency':>9}{'guilds':>8}{'events/s':>10}{'seq':>10}"
        f"{'restarts':>10}{'uptime':>9}"
    )
    lines = [head]
    for shard in status.shards:
        latency = "-" if shard.latency is None else f"{shard.latency:.1f}ms"
        seq = "-" if shard.seq is None else str(shard.seq)
        lines.append(
            f"{shard.id:>5}  {shard.state:<12}{latency:>9}{shard.guilds:>8}"
            f"{shard.events_per_second:>10.1f}{seq:>10}{shard.restarts:>10}"
            f"{shard.uptime:>8.0f}s"
        )
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
