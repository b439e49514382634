"""Metrics: counts added up across worker processes, labels kept bounded, and the families
a scrape returns, read back with Prometheus's own text parser."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from ipc.control import ShardStatus, VoiceStatus
from ipc.labels import lateness_bucket_labels
from ipc.states import ShardState, VoiceState
from ipc.status import BusRecord, FleetStatus, ShardRecord, SubscriberRecord, VoiceSessionRecord
from runtime.metrics import FleetCollector, MemoryReader, ShardTotals, VoiceTotals
from runtime.metricsserver import MetricsServer


def shard_status(**counts: Any) -> ShardStatus:
    fields: dict[str, Any] = {"shard": 0, "state": "ready", "latency_ms": 42.0, "seq": 1}
    fields.update(counts)
    return ShardStatus(**fields)


def test_shard_counts_add_up_across_processes_and_never_go_back() -> None:
    totals = ShardTotals()
    totals.add(100, shard_status(identifies=1, dispatch_types={"MESSAGE_CREATE": 5}))
    totals.add(100, shard_status(identifies=1, dispatch_types={"MESSAGE_CREATE": 9}))
    # the process was replaced: the new one counts from zero, and only what it adds is added
    totals.add(200, shard_status(resumes=1, dispatch_types={"MESSAGE_CREATE": 2}))
    # a report going backwards (a confused process) is a new starting point, not a decrease
    totals.add(200, shard_status(resumes=0, dispatch_types={"MESSAGE_CREATE": 1}))
    totals.add(200, shard_status(resumes=1, dispatch_types={"MESSAGE_CREATE": 3}))
    assert totals.counts["identifies"] == 1
    assert totals.counts["resumes"] == 2
    assert totals.dispatches["MESSAGE_CREATE"] == 9 + 2 + 2


def test_hostile_labels_are_folded_into_other() -> None:
    totals = ShardTotals()
    junk = {f"EVIL_{n}": 1 for n in range(1000)}
    totals.add(1, shard_status(dispatch_types=junk, closes={"4000": 1, "31337": 2, "x": 3}))
    assert set(totals.dispatches) == {"other"}
    assert 0 < totals.dispatches["other"] <= 256  # a report holds at most 256 names
    assert totals.closes == {"4000": 1, "other": 5}
    # values that are not counts are left out, not crashed on
    wire = {"shard": 0, "state": "ready", "identifies": "many", "dispatch_types": {"READY": -4}}
    totals.add(1, ShardStatus.from_raw(wire))  # as decoded off the control socket
    assert totals.counts["identifies"] == 0 and "READY" not in totals.dispatches


def test_heartbeat_latency_is_observed_once_per_new_ack() -> None:
    totals = ShardTotals()
    totals.add(1, shard_status(heartbeat_acks=1, latency_ms=30.0))
    totals.add(1, shard_status(heartbeat_acks=1, latency_ms=30.0))  # no new ACK: not again
    totals.add(1, shard_status(heartbeat_acks=2, latency_ms=700.0))
    buckets = dict(totals.latency.cumulative())
    assert buckets["0.05"] == 1 and buckets["1.0"] == 2 and buckets["+Inf"] == 2
    assert abs(totals.latency.total - 0.73) < 1e-9


def test_voice_totals_survive_a_rejoin() -> None:
    labels = lateness_bucket_labels()
    totals = VoiceTotals()
    totals.add(
        7,
        VoiceStatus(
            guild="1",
            state="connected",
            packets=100,
            lateness_buckets={labels[0]: 90, labels[3]: 10},
            lateness_sum=0.03,
            dave_epoch=3,
            dave_transitions=1,
        ),
    )
    totals.add(
        8,
        VoiceStatus(
            guild="1",
            state="connected",
            packets=50,
            lateness_buckets={labels[0]: 50},
            lateness_sum=0.01,
            dave_epoch=1,
        ),
    )
    assert totals.packets == 150 and totals.transitions == 1 and totals.epoch == 1
    assert totals.lateness.counts[0] == 140 and totals.lateness.counts[3] == 10
    assert abs(totals.lateness.total - 0.04) < 1e-9


def fleet_status(state: ShardState = ShardState.READY) -> FleetStatus:
    shard = ShardRecord(
        id=3,
        state=state,
        latency=40.0,
        seq=9,
        session="s",
        guilds=12,
        events_per_second=1.0,
        restarts=1,
        last_exit="",
        uptime=5.0,
        pid=None,
        dropped=0,
    )
    voice = VoiceSessionRecord(
        guild="555",
        channel="6",
        state=VoiceState.CONNECTED,
        ping=None,
        packets=0,
        late=0,
        jitter=None,
        rejoins=2,
        pid=None,
        error=None,
    )
    sub = SubscriberRecord(name="app-1", queued_bytes=10, delivered=5, dropped=1, dropped_bytes=9)
    bus = BusRecord(
        subscribers_reporting=1, subscriber_gaps=0, shard_drops=0, subscriber_drops=1,
        subscribers=[sub],
    )  # fmt: skip
    return FleetStatus(
        bus=bus,
        shard_count=4,
        identifies_remaining=900,
        uptime=10.0,
        shards=[shard],
        apps=[],
        voice=[voice],
    )


def scrape(collector: FleetCollector) -> dict[str, Any]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


def test_a_scrape_carries_shard_fleet_voice_and_process_families(tmp_path: Path) -> None:
    shard_totals = ShardTotals()
    shard_totals.add(1, shard_status(dispatch_types={"MESSAGE_CREATE": 7}, closes={"4000": 1}))
    voice_totals = VoiceTotals()
    voice_totals.add(2, VoiceStatus(guild="555", state="connected", packets=33))
    collector = FleetCollector(
        fleet_status, lambda: {3: shard_totals}, lambda: {"555": voice_totals}
    )
    families = scrape(collector)
    assert value(families, "gateway_shard_status", shard="3") == 4
    assert (
        value(families, "gateway_shard_events_total", shard="3", event_type="MESSAGE_CREATE") == 7
    )
    assert value(families, "shardline_shard_closes_total", shard="3", code="4000") == 1
    assert value(families, "shardline_shards_ready") == 1
    assert value(families, "shardline_identify_budget_remaining") == 900
    assert value(families, "shardline_bus_subscriber_dropped_total", subscriber="app-1") == 1
    assert value(families, "shardline_voice_packets_sent_total", guild="555") == 33
    assert value(families, "shardline_voice_rejoins_total", guild="555") == 2
    assert value(families, "shardline_processes", kind="supervisor") == 1
    assert value(families, "shardline_process_rss_bytes", kind="supervisor") > 0
    # a shard that is down reads 0 (disconnected) and not ready
    families = scrape(FleetCollector(lambda: fleet_status(ShardState.RESTARTING), dict, dict))
    assert value(families, "gateway_shard_status", shard="3") == 0
    assert value(families, "shardline_shards_ready") == 0


def test_memory_is_read_from_smaps_rollup_and_a_vanished_process_is_skipped(
    tmp_path: Path,
) -> None:
    (tmp_path / "41").mkdir()
    (tmp_path / "41" / "smaps_rollup").write_text(
        "00400000-7fff [rollup]\nRss:                2048 kB\nPss:                1024 kB\n"
    )
    reader = MemoryReader(proc=tmp_path)
    assert reader.read(41) == (2048 * 1024, 1024 * 1024)
    assert reader.read(42) is None


async def fetch(port: int, request: bytes) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


async def test_the_listener_answers_metrics_health_and_readiness() -> None:
    ready = [False]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet_status, dict, dict))
    server = MetricsServer(registry, lambda: (ready[0], "detail"))
    await server.start("127.0.0.1", 0)
    assert server.address is not None
    port = server.address[1]
    try:
        status, body = await fetch(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and b"gateway_shard_status" in body
        assert (await fetch(port, b"GET /healthz HTTP/1.1\r\n\r\n"))[0].endswith("200 OK")
        status, body = await fetch(port, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert status.endswith("503 Service Unavailable") and body == b"detail\n"
        ready[0] = True
        assert (await fetch(port, b"GET /readyz HTTP/1.0\r\n\r\n"))[0].endswith("200 OK")
        assert (await fetch(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0].endswith(
            "405 Method Not Allowed"
        )
        assert (await fetch(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0].endswith("404 Not Found")
        assert (await fetch(port, b"garbage\r\n\r\n"))[0].endswith("400 Bad Request")
        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await fetch(port, huge))[0].endswith("431 Request Header Fields Too Large")
        # still serving after all that
        assert (await fetch(port, b"GET /healthz HTTP/1.1\r\n\r\n"))[0].endswith("200 OK")
    finally:
        await server.close()
