"""What metrics cost: the same fleet with ``[metrics] listen`` off and on, side by side.

Each round starts the emulator and ``shardline run`` (one shard) twice, metrics off then
on (the order alternates by round); with metrics on, a scraper fetches ``/metrics`` every
``--scrape-every`` seconds meanwhile (Prometheus scrapes every 15-60 s: once a second is the
pessimistic case). Measured per fleet, as bench/bus_latency.py does: shard -> application
latency at 1k/s, the typed handler rate on a blast, and the CPU seconds the supervisor and
the shard spend per 1,000 events delivered. The counting in the shard and voice processes is
not switched by ``[metrics]`` (it always runs): compare bench/shard_throughput.py across
commits for that.

Run: .venv/bin/python bench/metrics_overhead.py [--rounds 3] [--blast 100000]
"""

import argparse
import asyncio
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bus_latency import Recorder, measure_latency, wait_ready  # noqa: E402
from harness import FEED, EmulatorProcess, SupervisorProcess, cpu_seconds  # noqa: E402
from shard_throughput import feed_emulator  # noqa: E402
from zmq_floor import summary  # noqa: E402

from ipc.client import Client  # noqa: E402

PORT = 9475  # the "on" fleet's listener (loopback)


class Scraper(threading.Thread):
    """GET /metrics every ``every`` seconds until stopped; counts scrapes and bytes."""

    def __init__(self, url: str, every: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.stopped = threading.Event()
        self.scrapes = 0
        self.failures = 0
        self.size = 0

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    self.size = len(response.read())
                self.scrapes += 1
            except OSError:
                self.failures += 1


async def measure_rate(emu: EmulatorProcess, rec: Recorder, count: int) -> float:
    """The typed handler's rate over a blast of ``count``: until all arrived, or nothing
    more for 3 s (what the shard dropped at its high-water mark never comes)."""
    rec.reset(timing=False)
    await asyncio.to_thread(emu.post, "blast", {"shard": 0, "count": count, "kind": "message"})
    seen, quiet_since = -1, time.monotonic()
    while rec.count < count and time.monotonic() - quiet_since < 3.0:
        if rec.count != seen:
            seen, quiet_since = rec.count, time.monotonic()
        await asyncio.sleep(0.05)
    return rec.count / (rec.last - rec.first) if rec.last > rec.first else 0.0


async def one_fleet(metrics: bool, args: argparse.Namespace) -> dict[str, float]:
    emu = feed_emulator()
    extra = f'[metrics]\nlisten = "127.0.0.1:{PORT}"\n' if metrics else ""
    supervisor = SupervisorProcess(
        emu,
        shards='count = 1\nintents = ["guilds", "guild_messages", "message_content"]',
        extra=extra,
    )
    client = Client(supervisor.events, supervisor.commands)
    client.connect([b"MESSAGE_CREATE "])
    rec = Recorder(client)
    receiver = asyncio.create_task(client.run())
    scraper = Scraper(f"http://127.0.0.1:{PORT}/metrics", args.scrape_every) if metrics else None
    try:
        await wait_ready(client)
        status = supervisor.status(timeout=5) or {"shards": []}
        pids = {"supervisor": supervisor.proc.pid, "shard": int(status["shards"][0]["pid"])}
        if scraper is not None:
            scraper.start()
        latencies, _ = await measure_latency(emu, rec, 1000, args.seconds, pids)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        rate = await measure_rate(emu, rec, args.blast)
        delivered = rec.count
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        after = supervisor.status(timeout=5) or {"bus": {}}
        drops = after["bus"].get("shard_drops", 0) + after["bus"].get("subscriber_drops", 0)
    finally:
        if scraper is not None:
            scraper.stopped.set()
        receiver.cancel()
        client.close()
        supervisor.close()
        emu.close()
    m = summary(latencies)
    result = {
        "p50": m["p50"],
        "p99": m["p99"],
        "rate": rate,
        "supervisor_cpu": used["supervisor"] / delivered * 1000,
        "shard_cpu": used["shard"] / delivered * 1000,
        "lost": args.blast - delivered,
        "bus_drops": drops,
    }
    if scraper is not None:
        result["scrapes"] = scraper.scrapes
        result["scrape_bytes"] = scraper.size
        if scraper.failures:
            print(f"  ({scraper.failures} scrapes failed)", file=sys.stderr)
    return result


async def run(args: argparse.Namespace) -> None:
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for n in range(args.rounds):
        for metrics in (False, True) if n % 2 == 0 else (True, False):
            result = await one_fleet(metrics, args)
            results[metrics].append(result)
            print(f"round {n + 1}, metrics {'on ' if metrics else 'off'}: {result}", flush=True)
    print(
        f"\nmetrics off vs on, {args.rounds} rounds each, alternating; one shard; "
        f"scraped every {args.scrape_every:g} s when on"
    )
    header = f"{'':<14}{'p50 ms':>9}{'p99 ms':>9}{'typed ev/s':>12}{'sup CPU s/1k':>14}"
    print(header + f"{'shard CPU s/1k':>16}")
    for metrics, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(
            f"{'on' if metrics else 'off':<14}{med['p50']:>9.3f}{med['p99']:>9.3f}"
            f"{med['rate']:>12,.0f}{med['supervisor_cpu']:>14.4f}{med['shard_cpu']:>16.4f}"
        )
    off = {k: statistics.median(r[k] for r in results[False]) for k in results[False][0]}
    on = {k: statistics.median(r[k] for r in results[True]) for k in results[False][0]}
    print(
        f"on/off (medians): typed rate {on['rate'] / off['rate']:.3f}x, p99 "
        f"{on['p99'] / off['p99']:.2f}x, supervisor CPU per event "
        f"{on['supervisor_cpu'] / off['supervisor_cpu']:.2f}x, shard CPU per event "
        f"{on['shard_cpu'] / off['shard_cpu']:.2f}x"
    )
    for metrics, rows in results.items():
        lost = [int(r["lost"]) for r in rows]
        drops = [int(r["bus_drops"]) for r in rows]
        print(f"metrics {'on' if metrics else 'off'}: blast events lost {lost}, bus drops {drops}")
    sizes = [r["scrape_bytes"] for r in results[True]]
    print(f"a scrape of this one-shard fleet: {statistics.median(sizes):,.0f} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fleets per mode")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency run at 1k/s")
    parser.add_argument("--blast", type=int, default=100_000, help="messages for the rate")
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds, when on")
    args = parser.parse_args()
    print(FEED, flush=True)
    if args.rounds < 1 or args.seconds <= 0 or args.blast < 1 or args.scrape_every <= 0:
        parser.error("--rounds, --seconds, --blast and --scrape-every must be positive")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
