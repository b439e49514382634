"""Prometheus metrics for one supervisor's fleet (``docs/metrics.md`` lists every one).

Workers count (a shard its dispatches, identifies, resumes...; a voice process its packets and
send lateness) and send the counts with their status every second. Here those counts are
added up per shard and per voice session across process restarts (a new process counts from
zero: only what it adds is added), and turned into metric families at scrape time from the
fleet status, so a scrape always agrees with ``shardline status``.

Label values are bounded: ``shard`` by the shards this host runs, ``event_type`` and ``code``
by ``ipc.labels``, ``guild`` only for active voice sessions, ``subscriber`` by the
applications connected, ``kind`` by the four worker kinds.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ipc.states import ShardState
from ipc.status import FleetStatus
from runtime.totals import LATENCY_BUCKETS, Histogram, ShardTotals, VoiceTotals

__all__ = [
    "LATENCY_BUCKETS",
    "FleetCollector",
    "Histogram",
    "MemoryReader",
    "ShardTotals",
    "VoiceTotals",
    "gateway_shard_status",
]


# gateway-proxy's gateway_shard_status codes, so its dashboards read ours.
_STATUS_CODES = {
    ShardState.CONNECTING: 1,
    ShardState.STARTING: 1,
    ShardState.IDENTIFYING: 2,
    ShardState.RESUMING: 3,
    ShardState.READY: 4,
}


def gateway_shard_status(state: ShardState) -> int:
    """0 disconnected (stopped, restarting, backing off, fatal), 1 connecting, 2 identifying,
    3 resuming, 4 connected."""
    return _STATUS_CODES.get(state, 0)


class MemoryReader:
    """RSS and PSS of processes from /proc/PID/smaps_rollup, read at most every
    ``max_age`` seconds (reading PSS walks the page tables: not on every scrape of a large
    fleet)."""

    def __init__(self, max_age: float = 10.0, proc: Path = Path("/proc")) -> None:
        self.max_age = max_age
        self.proc = proc
        self._cache: dict[int, tuple[float, int, int]] = {}

    def read(self, pid: int) -> tuple[int, int] | None:
        """(rss, pss) in bytes, or None when the process is gone or unreadable."""
        now = time.monotonic()
        cached = self._cache.get(pid)
        if cached is not None and now - cached[0] < self.max_age:
            return cached[1], cached[2]
        try:
            text = (self.proc / str(pid) / "smaps_rollup").read_text()
        except OSError:
            self._cache.pop(pid, None)
            return None
        sizes = {"Rss:": 0, "Pss:": 0}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in sizes and parts[1].isdigit():
                sizes[parts[0]] = int(parts[1]) * 1024
        self._cache[pid] = (now, sizes["Rss:"], sizes["Pss:"])
        return sizes["Rss:"], sizes["Pss:"]

    def forget_except(self, pids: set[int]) -> None:
        for pid in [p for p in self._cache if p not in pids]:
            del self._cache[pid]


class FleetCollector(Collector):
    """Builds every metric family from the fleet's status and the totals, at scrape time."""

    def __init__(
        self,
        status: Callable[[], FleetStatus],
        shard_totals: Callable[[], dict[int, ShardTotals]],
        voice_totals: Callable[[], dict[str, VoiceTotals]],
        memory: MemoryReader | None = None,
    ) -> None:
        self.status = status
        self.shard_totals = shard_totals
        self.voice_totals = voice_totals
        self.memory = memory or MemoryReader()

    def collect(self) -> Iterator[Metric]:
        fleet = self.status()
        yield from self._shards(fleet, self.shard_totals())
        yield from self._fleet(fleet)
        yield from self._voice(fleet, self.voice_totals())
        yield from self._processes(fleet)

    def _shards(self, fleet: FleetStatus, totals: dict[int, ShardTotals]) -> Iterator[Metric]:
        status = GaugeMetricFamily(
            "gateway_shard_status",
            "Shard connection: 0 disconnected, 1 connecting, 2 identifying, 3 resuming, "
            "4 connected (gateway-proxy's codes).",
            labels=["shard"],
        )
        state = GaugeMetricFamily(
            "shardline_shard_state", "1 for the shard's current state.", labels=["shard", "state"]
        )
        guilds = GaugeMetricFamily(
            "shardline_shard_guilds", "Guilds on the shard.", labels=["shard"]
        )
        restarts = CounterMetricFamily(
            "shardline_shard_restarts",
            "Shard processes replaced after they ended.",
            labels=["shard"],
        )
        events = CounterMetricFamily(
            "gateway_shard_events",
            "Dispatches received, by event type (undocumented types count as other).",
            labels=["shard", "event_type"],
        )
        latency = HistogramMetricFamily(
            "gateway_shard_latency",
            "Heartbeat round trip (HEARTBEAT to ACK), seconds.",
            labels=["shard"],
        )
        counters = {
            name: CounterMetricFamily(f"shardline_shard_{metric}", doc, labels=["shard"])
            for name, metric, doc in (
                ("reconnects", "reconnects", "Connections that ended and were reopened."),
                ("identifies", "identifies", "IDENTIFYs sent (each costs the daily budget)."),
                ("resumes", "resumes", "RESUMEs sent."),
                ("invalid_sessions", "invalid_sessions", "INVALID_SESSION (op 9) received."),
                ("dropped", "bus_dropped", "Events the shard dropped at the bus high-water mark."),
            )
        }
        closes = CounterMetricFamily(
            "shardline_shard_closes",
            "Websocket closes the shard did not ask for, by close code.",
            labels=["shard", "code"],
        )
        for record in fleet.shards:
            shard = str(record.id)
            status.add_metric([shard], gateway_shard_status(record.state))
            state.add_metric([shard, record.state.value], 1)
            guilds.add_metric([shard], record.guilds)
            restarts.add_metric([shard], record.restarts)
            total = totals.get(record.id)
            if total is None:
                continue
            for name, family in counters.items():
                family.add_metric([shard], total.counts[name])
            for label, count in sorted(total.dispatches.items()):
                events.add_metric([shard, label], count)
            for label, count in sorted(total.closes.items()):
                closes.add_metric([shard, label], count)
            latency.add_metric([shard], total.latency.cumulative(), total.latency.total)
        yield from (status, state, guilds, restarts, events, latency, *counters.values(), closes)

    def _fleet(self, fleet: FleetStatus) -> Iterator[Metric]:
        ready = sum(1 for s in fleet.shards if s.state is ShardState.READY)
        yield GaugeMetricFamily(
            "shardline_shards", "Shards this supervisor runs.", value=len(fleet.shards)
        )
        yield GaugeMetricFamily("shardline_shards_ready", "Shards READY.", value=ready)
        yield GaugeMetricFamily(
            "shardline_shard_count", "The bot's total shard count.", value=fleet.shard_count
        )
        yield GaugeMetricFamily(
            "shardline_identify_budget_remaining",
            "IDENTIFYs left in Discord's daily session_start_limit.",
            value=fleet.identifies_remaining,
        )
        yield GaugeMetricFamily(
            "shardline_uptime_seconds", "Since the supervisor started.", value=fleet.uptime
        )
        bus = fleet.bus
        yield GaugeMetricFamily(
            "shardline_bus_subscribers",
            "Applications subscribed to the event bus.",
            value=len(bus.subscribers),
        )
        dropped = CounterMetricFamily(
            "shardline_bus_subscriber_dropped",
            "Events the bus dropped for a subscriber whose buffer was full.",
            labels=["subscriber"],
        )
        queued = GaugeMetricFamily(
            "shardline_bus_subscriber_queued_bytes",
            "Bytes waiting in the bus for a subscriber.",
            labels=["subscriber"],
        )
        delivered = CounterMetricFamily(
            "shardline_bus_subscriber_delivered",
            "Events the bus delivered to a subscriber.",
            labels=["subscriber"],
        )
        for sub in bus.subscribers:
            dropped.add_metric([sub.name], sub.dropped)
            queued.add_metric([sub.name], sub.queued_bytes)
            delivered.add_metric([sub.name], sub.delivered)
        yield from (dropped, queued, delivered)
        yield GaugeMetricFamily(
            "shardline_bus_client_gaps",
            "Sequence gaps the applications' clients reported (reports of the last 10 s).",
            value=bus.subscriber_gaps,
        )
        apps = GaugeMetricFamily(
            "shardline_apps", "Application processes by state.", labels=["state"]
        )
        app_states = Counter(app.state for app in fleet.apps)
        for app_state in ("running", "restarting"):
            apps.add_metric([app_state], app_states.get(app_state, 0))
        yield apps

    def _voice(self, fleet: FleetStatus, totals: dict[str, VoiceTotals]) -> Iterator[Metric]:
        sessions = GaugeMetricFamily(
            "shardline_voice_sessions", "Voice sessions by state.", labels=["state"]
        )
        for voice_state, count in sorted(Counter(v.state.value for v in fleet.voice).items()):
            sessions.add_metric([voice_state], count)
        packets = CounterMetricFamily(
            "shardline_voice_packets_sent", "RTP packets sent.", labels=["guild"]
        )
        late = CounterMetricFamily(
            "shardline_voice_late_frames", "Frames sent over 5 ms late.", labels=["guild"]
        )
        lateness = HistogramMetricFamily(
            "shardline_voice_send_lateness_seconds",
            "How far behind its 20 ms deadline each frame left.",
            labels=["guild"],
        )
        epoch = GaugeMetricFamily(
            "shardline_voice_dave_epoch", "The DAVE (MLS) group's epoch.", labels=["guild"]
        )
        transitions = CounterMetricFamily(
            "shardline_voice_dave_transitions",
            "DAVE protocol transitions executed.",
            labels=["guild"],
        )
        rejoins = CounterMetricFamily(
            "shardline_voice_rejoins",
            "Voice processes restarted for the session.",
            labels=["guild"],
        )
        for record in fleet.voice:
            total = totals.get(record.guild)
            rejoins.add_metric([record.guild], record.rejoins)
            if total is None:
                continue
            packets.add_metric([record.guild], total.packets)
            late.add_metric([record.guild], total.late)
            lateness.add_metric([record.guild], total.lateness.cumulative(), total.lateness.total)
            epoch.add_metric([record.guild], total.epoch)
            transitions.add_metric([record.guild], total.transitions)
        yield from (sessions, packets, late, lateness, epoch, transitions, rejoins)

    def _processes(self, fleet: FleetStatus) -> Iterator[Metric]:
        pids: dict[str, list[int]] = {
            "supervisor": [os.getpid()],
            "shard": [s.pid for s in fleet.shards if s.pid],
            "voice": [v.pid for v in fleet.voice if v.pid],
            "app": [a.pid for a in fleet.apps if a.pid],
        }
        count = GaugeMetricFamily("shardline_processes", "Processes by kind.", labels=["kind"])
        rss = GaugeMetricFamily(
            "shardline_process_rss_bytes", "Resident memory, summed by kind.", labels=["kind"]
        )
        pss = GaugeMetricFamily(
            "shardline_process_pss_bytes",
            "Proportional set size (shared pages split between sharers), summed by kind.",
            labels=["kind"],
        )
        for kind, kind_pids in pids.items():
            sizes = [m for m in map(self.memory.read, kind_pids) if m is not None]
            count.add_metric([kind], len(kind_pids))
            rss.add_metric([kind], sum(m[0] for m in sizes))
            pss.add_metric([kind], sum(m[1] for m in sizes))
        self.memory.forget_except({pid for kind_pids in pids.values() for pid in kind_pids})
        yield from (count, rss, pss)
