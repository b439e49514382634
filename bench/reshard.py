"""Resharding's figures: `shardline run` (its own process) against the emulator, chatter in
every guild the whole time, one subscriber reading the bus; then `shardline.reshard` to M.

- time from the request to the switch, beside the identify bound for M shards (Discord's
  5 s interval per bucket by default);
- memory: the supervisor's and its shard processes' RSS, summed, before the reshard, at its
  peak during the overlap, and after the old generation closed;
- what the subscriber saw: gaps and duplicates in each guild's message numbers (0 expected),
  and the latency from the shard's receipt to the subscriber (p50, p99, max) before, during
  and after the switch.

With ``--hosts N`` (N > 1) the fleet is N `shardline run` processes, one real redis-server
(``[cluster]``, lease_ttl 3 s), the subscriber on the first host, the reshard asked of it.

    .venv/bin/python bench/reshard.py [--from 4] [--to 8] [--concurrency 2] [--interval 5]
                                      [--hosts 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import zmq  # noqa: E402
from harness import FEED  # noqa: E402

from emulator import Emulator, EmulatorConfig, GatewayRules, WorldConfig  # noqa: E402
from ipc.client import request_sync  # noqa: E402
from ipc.codec import DUPLICATE, SUBSCRIBE, Envelope  # noqa: E402
from ipc.requests import GetStatus, Reshard, StatusReply  # noqa: E402
from runtime.scheduler import startup_seconds  # noqa: E402
from tests.redisserver import RedisServer  # noqa: E402
from tests.system.test_cluster import HostProcess  # noqa: E402


def tree_rss_mb(root: int) -> float:
    """RSS of ``root`` and every process below it, in MB."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    total = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class Subscriber(threading.Thread):
    """Reads every bus message: each guild's message numbers, and each latency."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.connect(endpoint)
        self.sock.send_multipart([SUBSCRIBE, b"bench"])
        self.seen: dict[str, list[int]] = {}
        self.latencies: list[tuple[float, float]] = []  # (when, ms)
        self.stop = threading.Event()

    def run(self) -> None:
        renewed = time.monotonic()
        while not self.stop.is_set():
            if time.monotonic() - renewed > 2:
                self.sock.send_multipart([SUBSCRIBE, b"bench"])
                renewed = time.monotonic()
            if not self.sock.poll(200):
                continue
            topic, envelope, body = self.sock.recv_multipart()
            if topic == DUPLICATE or not topic.startswith(b"MESSAGE_CREATE"):
                continue
            now = time.time_ns()
            d = orjson.loads(body)["d"]
            self.seen.setdefault(d["guild_id"], []).append(int(d["shardline_guild_seq"]))
            sent = Envelope.decode(envelope).received_ns
            self.latencies.append((time.monotonic(), (now - sent) / 1e6))
        self.sock.close(linger=0)
        self.ctx.term()

    def gaps_and_duplicates(self) -> tuple[int, int]:
        gaps = duplicates = 0
        for numbers in self.seen.values():
            duplicates += len(numbers) - len(set(numbers))
            distinct = sorted(set(numbers))
            gaps += distinct[-1] - distinct[0] + 1 - len(distinct)
        return gaps, duplicates


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {statistics.median(values):.2f} / p99 {p99:.2f} / max {values[-1]:.2f} ms"


async def chatter(emu: Emulator, stop: asyncio.Event, rate: float) -> int:
    """``rate`` messages a second, round the guilds, until ``stop``."""
    sent, start = 0, time.monotonic()
    guilds = emu.world.guild_ids
    while not stop.is_set():
        await emu.message(guilds[sent % len(guilds)])
        sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    return sent


async def main_async(args: argparse.Namespace) -> None:
    rules = GatewayRules(identify_interval=args.interval, max_concurrency=args.concurrency)
    config = EmulatorConfig(
        shards=args.source,
        rules=rules,
        world=WorldConfig(guilds=args.guilds, large_share=0.0),
    )
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="shardline-bench-"))
        redis = stack.enter_context(RedisServer()) if args.hosts > 1 else None
        run = Path(tmp) / "run"
        async with Emulator(config) as emu:
            hosts: list[HostProcess] = []
            if redis is not None:
                hosts = [
                    HostProcess(emu, redis, Path(tmp), f"h{n}", args.interval)
                    for n in range(args.hosts)
                ]
                procs = [h.proc for h in hosts]
                run = hosts[0].runtime_dir
            else:
                path = Path(tmp) / "shardline.toml"
                path.write_text(
                    f'[discord]\nrest_url = "{emu.rest_url}"\n'
                    '[shards]\nintents = ["guilds", "guild_messages"]\n'
                    f'[ipc]\nruntime_dir = "{run}"\n[log]\nlevel = "warning"\n'
                )
                procs = [subprocess.Popen(
                    [sys.executable, "-m", "runtime.cli", "run", "--config", str(path),
                     "--identify-interval", str(args.interval)],
                    env={**os.environ, "DISCORD_TOKEN": emu.rules.token},
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )]  # fmt: skip
            commands = f"ipc://{run}/commands.sock"

            def rss() -> float:
                return sum(tree_rss_mb(proc.pid) for proc in procs)

            def status() -> dict[str, Any]:
                try:
                    reply = request_sync(commands, GetStatus(), 2.0)
                except Exception:
                    return {}
                return reply.raw["status"] if isinstance(reply, StatusReply) else {}

            subscriber: Subscriber | None = None
            stop = asyncio.Event()
            talk: asyncio.Task[int] | None = None
            try:
                while (
                    not (s := await asyncio.to_thread(status))
                    or not all(x["state"] == "ready" for x in s["shards"])
                    or len(s["shards"]) < args.source
                ):
                    await asyncio.sleep(0.2)
                subscriber = Subscriber(f"ipc://{run}/events.sock")
                subscriber.start()
                talk = asyncio.create_task(chatter(emu, stop, args.rate))
                await asyncio.sleep(3.0)  # a steady state to compare with
                before = rss()
                asked = time.monotonic()
                reply = await asyncio.to_thread(request_sync, commands, Reshard(count=args.target))
                if not reply.raw.get("started"):
                    raise SystemExit(f"refused: {reply.raw}")
                peak, switched_at, state = before, 0.0, ""
                while state not in ("done", "aborted"):
                    peak = max(peak, rss())
                    state = ((await asyncio.to_thread(status)).get("reshard") or {}).get(
                        "state", ""
                    )
                    if state in ("switched", "switching", "done") and not switched_at:
                        switched_at = time.monotonic()
                    await asyncio.sleep(0.1)
                await asyncio.sleep(3.0)
                after = rss()
                stop.set()
                sent = await talk
                talk = None
            finally:
                stop.set()
                if talk is not None:
                    await talk
                if subscriber is not None:
                    subscriber.stop.set()
                    subscriber.join(5)
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(60)
            assert subscriber is not None
            bound = startup_seconds(args.target, args.concurrency, args.interval)
            took = switched_at - asked
            gaps, duplicates = subscriber.gaps_and_duplicates()
            lat = subscriber.latencies
            where = "one host" if redis is None else f"{args.hosts} hosts through Redis"
            print(
                f"reshard {args.source} -> {args.target} on {where} "
                f"(max_concurrency {args.concurrency}, "
                f"identify every {args.interval:g} s, {args.guilds} guilds, chatter "
                f"{args.rate:g}/s): state {state}; request to switch {took:.2f} s against an "
                f"identify bound of {bound:.2f} s for {args.target} shards "
                f"(+{took - bound:.2f} s: the first round's start, READY and guilds)"
            )
            print(
                f"memory (supervisors + shard processes, RSS): {before:.0f} MB before, "
                f"peak {peak:.0f} MB during the overlap (+{peak - before:.0f} MB), "
                f"{after:.0f} MB after"
            )
            print(
                f"subscriber: {sum(len(v) for v in subscriber.seen.values())} of {sent} "
                f"messages, {gaps} gaps and {duplicates} duplicates in the guilds' numbers"
            )
            print(
                "latency shard -> subscriber: before the request "
                + spread([ms for at, ms in lat if at < asked])
                + "; overlap "
                + spread([ms for at, ms in lat if asked <= at < switched_at])
                + "; the 2 s after the switch "
                + spread([ms for at, ms in lat if switched_at <= at < switched_at + 2])
                + "; after "
                + spread([ms for at, ms in lat if at >= switched_at + 2])
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=int, default=4, help="shards before")
    parser.add_argument("--to", dest="target", type=int, default=8, help="shards after")
    parser.add_argument("--concurrency", type=int, default=2, help="max_concurrency")
    parser.add_argument("--interval", type=float, default=5.0, help="identify interval (s)")
    parser.add_argument("--guilds", type=int, default=64)
    parser.add_argument("--rate", type=float, default=200.0, help="chatter, messages/s")
    parser.add_argument("--hosts", type=int, default=1, help="hosts (>1: a [cluster] fleet)")
    args = parser.parse_args()
    print(FEED, flush=True)
    if min(args.source, args.target, args.concurrency, args.guilds) < 1 or args.rate <= 0:
        parser.error("counts must be positive")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
