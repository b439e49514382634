"""The multi-host fleet's figures: hosts on this machine (each `shardline run` with its own
runtime dir, its own process group), one real redis-server, the emulator.

1. Start: H hosts x S shards (shards = "auto") started together, time until every shard is
   READY somewhere, beside the identify bound ((ceil(S / max_concurrency) - 1) x interval).
2. Takeover: SIGKILL one host's process group, time until its shards are READY on the others
   (lease TTL + one identify slot is the expectation), repeated (the killed host is started
   again between repeats); p50 / p99.
3. Redis round trips: commands Redis processed per IDENTIFY during the start, and per shard
   per second while the fleet idles (lease renewals, host entries, checkpoints).
4. Coordinator CPU at 1,000 shards, simulated (no shard processes): CPU per coordinator turn
   and per 1,000 checkpoint writes, in this process.
5. The fleet bus: two hosts on tcp:// with CURVE, one subscriber on host 0; a burst of
   MESSAGE_CREATEs from a shard of host 0, then from a shard of host 1, alternating: the rate
   the subscriber receives and the latency from the shard's receipt to the subscriber's,
   local against one host further.

    .venv/bin/python bench/cluster.py [--hosts 3] [--shards 48] [--concurrency 16]
        [--interval 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402
from harness import FEED  # noqa: E402

from emulator import Emulator, EmulatorConfig, GatewayRules, WorldConfig  # noqa: E402
from ipc.checkpoint import Checkpoint  # noqa: E402
from runtime.cluster.coordinator import Coordinator  # noqa: E402
from tests.redisserver import RedisServer  # noqa: E402
from tests.system.test_cluster import FleetKeys, HostProcess, ready_union  # noqa: E402


async def until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate()`` held (polled every 50 ms); raises on timeout."""
    started = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - started > timeout:
            raise TimeoutError("the fleet did not get there in time")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def commands_processed(redis_server: RedisServer) -> int:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        return int((await client.info("stats"))["total_commands_processed"])
    finally:
        await client.aclose()


async def command_calls(redis_server: RedisServer) -> dict[str, int]:
    """Calls per command so far (INFO commandstats)."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def fleet_figures(args: argparse.Namespace) -> None:
    interval = args.interval
    rules = GatewayRules(identify_interval=interval, max_concurrency=args.concurrency)
    config = EmulatorConfig(
        shards=args.shards, rules=rules, world=WorldConfig(guilds=args.shards * 4, large_share=0)
    )
    names = [f"host{n}" for n in range(args.hosts)]
    with tempfile.TemporaryDirectory(prefix="shardline-bench-") as tmp, RedisServer() as redis:
        root = Path(tmp)
        async with Emulator(config) as emu:
            before = await commands_processed(redis)
            started = time.monotonic()
            running = [HostProcess(emu, redis, root, n, interval) for n in names]
            everything = set(range(args.shards))
            try:
                await until(lambda: ready_union(running) == everything, 300)
                done = time.monotonic()
                took = done - started
                identifies = len(emu.gateway.identifies)
                first = min(r.at for r in emu.gateway.identifies)
                during = await commands_processed(redis) - before
                bound = (math.ceil(args.shards / args.concurrency) - 1) * interval
                # READY time from the first IDENTIFY, against the bound: how close the fleet's
                # schedule comes to the best Discord allows (the bound is 0 for one round)
                from_first = done - first
                ratio = f"{from_first / bound:.2f}x the bound" if bound else "one round"
                print(
                    f"start: {args.hosts} hosts x {args.shards} shards (max_concurrency "
                    f"{args.concurrency}, identify every {interval:g} s per bucket): all READY "
                    f"{from_first:.2f} s after the first IDENTIFY ({ratio}; identify bound "
                    f"{bound:.2f} s), {took:.2f} s after the hosts were started (process "
                    f"start included); {identifies} IDENTIFYs, refused "
                    f"{sum(1 for r in emu.gateway.identifies if r.outcome != 'ready')}",
                    flush=True,
                )
                # when each round of IDENTIFYs went (a round: one per bucket), from the first
                per_bucket: dict[int, list[float]] = {}
                for record in sorted(emu.gateway.identifies, key=lambda r: r.at):
                    per_bucket.setdefault(record.bucket, []).append(record.at - first)
                rounds = [
                    max(times[n] for times in per_bucket.values() if len(times) > n)
                    for n in range(max(len(t) for t in per_bucket.values()))
                ]
                print(
                    "start: the last IDENTIFY of each round at "
                    + ", ".join(f"+{at:.2f} s" for at in rounds)
                    + " (the emulator sends READY at once; the bound puts round n at "
                    + f"+{interval:g}n s)"
                )
                print(f"redis: {during / max(1, identifies):.1f} commands per IDENTIFY (start)")
                idle_from, calls_from = await commands_processed(redis), await command_calls(redis)
                await asyncio.sleep(10.0)
                idle = await commands_processed(redis) - idle_from
                calls = await command_calls(redis)
                split = sorted(((calls[k] - calls_from.get(k, 0), k) for k in calls), reverse=True)[
                    :5
                ]
                shown = ", ".join(f"{k} {n / 10:.1f}/s" for n, k in split if n)
                trips = sum(calls.get(k, 0) - calls_from.get(k, 0) for k in ("evalsha", "mget"))
                print(
                    f"redis: {trips / 10 / args.shards:.2f} round trips per shard per second "
                    f"(idle: a checkpoint each, the hosts' turns shared); commands counted "
                    f"inside scripts too {idle / 10 / args.shards:.2f} ({shown})"
                )
                takeovers = []
                for n in range(args.repeats):
                    victim = running[1 + n % (len(running) - 1)]
                    victim.kill_host()
                    survivors = [h for h in running if h is not victim]
                    takeovers.append(
                        await until(lambda s=survivors: ready_union(s) == everything, 120)
                    )
                    victim.stop()
                    running[running.index(victim)] = HostProcess(
                        emu, redis, root, victim.name, interval
                    )
                    await until(lambda: ready_union(running) == everything, 120)
                takeovers.sort()
                p99 = takeovers[min(len(takeovers) - 1, int(0.99 * len(takeovers)))]
                print(
                    f"takeover after a host's SIGKILL (lease TTL 3 s): p50 "
                    f"{statistics.median(takeovers):.2f} s, p99 {p99:.2f} s over {len(takeovers)}"
                    f"; IDENTIFYs in all {len(emu.gateway.identifies)} (resumes, not identifies)"
                )
            finally:
                for host in running:
                    host.resume()
                    host.stop()


class _Nothing:
    """Shard processes, simulated: the coordinator's decisions go nowhere."""

    def start_shard(self, shard: int, checkpoint: Checkpoint | None) -> None: ...

    def kill_shard(self, shard: int) -> None: ...

    async def hand_over(self, shard: int) -> Checkpoint | None:
        return None

    def permit(self, shard: int) -> None: ...

    def permit_resume(self, shard: int) -> None: ...


async def coordinator_cpu(shards: int) -> None:
    with RedisServer() as redis_server:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            coordinator = Coordinator(
                client, "bench", "host0", shards, 16, _Nothing(), lease_ttl=30.0
            )
            await coordinator.keep()  # takes every shard
            turns = 20
            cpu = time.process_time()
            for _ in range(turns):
                await coordinator.keep()
            per_turn = (time.process_time() - cpu) / turns * 1000
            cpu = time.process_time()
            for shard in range(shards):
                await coordinator.checkpoint(
                    Checkpoint(shard, shards, f"s{shard}", 1000, "wss://gateway.discord.gg")
                )
            per_thousand = (time.process_time() - cpu) / shards * 1000 * 1000
            print(
                f"coordinator at {shards} shards (simulated): {per_turn:.1f} ms CPU per turn "
                f"(renew, hosts, leases view; one turn every lease TTL / 3), "
                f"{per_thousand:.0f} ms CPU per 1,000 checkpoint writes"
            )
        finally:
            await client.aclose()


async def fleet_bus_figures(count: int, rounds: int) -> None:
    import zmq

    from ipc.client import secure
    from ipc.codec import SUBSCRIBE

    keys = FleetKeys.new()
    config = EmulatorConfig(
        shards=2, rules=GatewayRules(identify_interval=0.2), world=WorldConfig(guilds=8)
    )
    with tempfile.TemporaryDirectory(prefix="shardline-bench-") as tmp, RedisServer() as redis:
        async with Emulator(config) as emu:
            running = [
                HostProcess(emu, redis, Path(tmp), n, 0.3, keys=keys) for n in ("host0", "host1")
            ]
            ctx: zmq.Context[Any] = zmq.Context()
            sub = ctx.socket(zmq.DEALER)
            try:
                await until(lambda: all(len(h.ready_shards()) == 1 for h in running), 120)
                local, remote = (next(iter(h.ready_shards())) for h in running)
                sub.setsockopt(zmq.RCVHWM, 100_000)
                secure(sub, keys.public, keys.app_secret)
                sub.connect(running[0].events)
                subscribe = [SUBSCRIBE, b"bench", b"MESSAGE_CREATE"]
                sub.send_multipart(subscribe)
                await until(lambda: "bench" in running[0].subscribers(), 30)
                await until(lambda: "host:host0" in running[1].subscribers(), 30)
                figures: dict[str, list[tuple[float, float, float, int]]] = {}
                for _ in range(rounds):
                    for label, shard in (("local", local), ("remote", remote)):
                        sub.send_multipart(subscribe)  # renewed, as a client does
                        task = emu.stream(shard, rate=20_000, count=count)
                        latencies, first, last = await asyncio.to_thread(_receive, sub, count)
                        await task
                        latencies.sort()
                        figures.setdefault(label, []).append(
                            (
                                (len(latencies) - 1) / max(last - first, 1e-9),
                                latencies[len(latencies) // 2],
                                latencies[int(len(latencies) * 0.99)],
                                count - len(latencies),
                            )
                        )
                for label, runs in figures.items():
                    shown = "; ".join(
                        f"{rate:,.0f}/s p50 {p50:.2f} ms p99 {p99:.2f} ms lost {lost}"
                        for rate, p50, p99, lost in runs
                    )
                    print(f"fleet bus, {count} messages from a {label} shard: {shown}")
                best = {k: max(r[0] for r in v) for k, v in figures.items()}
                print(
                    f"fleet bus: remote/local best rate {best['remote'] / best['local']:.2f} "
                    "(the subscriber's own reading is the same in both)"
                )
            finally:
                sub.close(linger=0)
                ctx.term()
                for host in running:
                    host.stop()


def _receive(sock: Any, count: int) -> tuple[list[float], float, float]:
    """Latencies (ms, shard receipt -> here) of up to ``count`` messages; stops after 5 s
    without one."""
    from ipc.codec import Envelope

    latencies: list[float] = []
    first = last = 0.0
    while len(latencies) < count and sock.poll(5000):
        _, envelope, _ = sock.recv_multipart()
        now = time.time_ns()
        last = time.monotonic()
        first = first or last
        latencies.append((now - Envelope.decode(envelope).received_ns) / 1e6)
    return latencies, first, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--shards", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16, help="max_concurrency")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="identify interval per bucket (Discord: 5)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="takeovers to time")
    parser.add_argument("--simulated", type=int, default=1000, help="shards for part 4")
    parser.add_argument("--bus-messages", type=int, default=20_000, help="per burst, part 5")
    parser.add_argument("--bus-rounds", type=int, default=3, help="bursts per side, part 5")
    args = parser.parse_args()
    print(FEED, flush=True)
    if args.hosts < 2 or min(args.shards, args.repeats, args.concurrency, args.interval) <= 0:
        parser.error(
            "--hosts must be at least 2; --shards, --repeats, --concurrency, --interval positive"
        )
    asyncio.run(fleet_figures(args))
    asyncio.run(coordinator_cpu(args.simulated))
    asyncio.run(fleet_bus_figures(args.bus_messages, args.bus_rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
