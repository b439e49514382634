"""The event path's headline figures: how fast a typed handler runs and how much CPU each
delivered event costs, shardline beside discord.py and hikari, on the same feed, alternating.

- shardline: the shard process -> the supervisor's bus -> an application process
  (bench/event_app.py: ``ipc.Client``, a typed ``MessageCreate`` handler reading the content
  and the author's id); discord.py: ``on_message``; hikari: a ``MessageCreateEvent``
  listener without cache (bench/shard_throughput.py's consumers).
- the feed: ``--count`` MESSAGE_CREATEs blasted as fast as the client takes them, shaped like
  Discord's (emulator/feed.py: chat of varied length, a fifth with replies, mentions,
  attachments or embeds; ~1.3 KB) or, with ``--feed padded``, the old uniform padded feed.
- per client: events a second at the handler; CPU seconds (user + system) per 1,000 events
  of every process of the client (for shardline: shard, supervisor, app; the emulator's own
  is left out) over the blast; each process's peak RSS during it; events lost, if any.
- on two cores, then on one (every process, the emulator's too, pinned to core 0), each
  round running the clients in turn.

    .venv/bin/python bench/event_path.py [--count 100000] [--rounds 1] [--feed discord]
                                         [--only shardline,discord.py,hikari] [--cores 2,1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import EmulatorProcess, SupervisorProcess, cpu_seconds, rss_mb  # noqa: E402
from shard_throughput import read_result  # noqa: E402

GUILDS = 20


class PeakRss(threading.Thread):
    """Each process's highest RSS, sampled every 20 ms until stopped."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0.0)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_mb(pid))

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join(2)
        return self.peak


def blast_and_measure(
    emu: EmulatorProcess, stdout: Any, pids: dict[str, int], count: int, feed: str
) -> dict[str, Any]:
    """Blast ``count`` messages; the client's result line, its CPU and peak RSS per process."""
    peaks = PeakRss(pids)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    peaks.start()
    emu.post("blast", {"shard": 0, "count": count, "kind": "message", "feed": feed})
    result = read_result(stdout)
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    rate = result["count"] / result["seconds"] if result["seconds"] else 0.0
    return {"rate": rate, "cpu": cpu, "rss": peaks.stop(), "lost": count - result["count"]}


def shardline(count: int, feed: str) -> dict[str, Any]:
    emu = EmulatorProcess(guilds=GUILDS, shards=1)
    sup = SupervisorProcess(
        emu, shards='count = 1\nintents = ["guilds", "guild_messages", "message_content"]'
    )
    app = None
    try:
        sup.wait_all_ready()
        app = subprocess.Popen(
            [
                *(sys.executable, str(ROOT / "bench" / "event_app.py")),
                *(sup.events, sup.commands, "--count", str(count)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert app.stdout is not None
        while (line := app.stdout.readline()) and line.strip() != "ready":
            pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the bus has the application's subscription
            subs = ((sup.status() or {}).get("bus") or {}).get("subscribers") or []
            if subs:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        status = sup.status() or {}
        pids = {
            "shard": int(status["shards"][0]["pid"]),
            "supervisor": sup.proc.pid,
            "app": app.pid,
        }
        out = blast_and_measure(emu, app.stdout, pids, count, feed)
        status = sup.status() or {}
        subs = ((status.get("bus") or {}).get("subscribers")) or []
        out["where"] = (
            f"shard dropped {status['shards'][0]['dropped']}, bus dropped "
            f"{sum(x['dropped'] for x in subs)} for the app"
        )
        return out
    finally:
        if app is not None:
            app.kill()
            app.wait(10)
        sup.close()
        emu.close()


def library(name: str, count: int, feed: str) -> dict[str, Any]:
    emu = EmulatorProcess(guilds=GUILDS, shards=1)
    expect = json.dumps({"MESSAGE_CREATE": count, "GUILD_CREATE": 10**9})
    proc = subprocess.Popen(
        [
            *(sys.executable, str(ROOT / "bench" / "shard_throughput.py"), "--consumer", name),
            *("--gateway", emu.gateway, "--rest", emu.rest, "--token", emu.token),
            *("--expect", expect),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        while (line := proc.stdout.readline()) and line.strip() != "ready":
            pass
        if not line:
            raise RuntimeError(f"{name} exited before it was ready")
        time.sleep(2.0)  # the login's GUILD_CREATEs handled
        return blast_and_measure(emu, proc.stdout, {name: proc.pid}, count, feed)
    finally:
        proc.kill()
        proc.wait(10)
        emu.close()


def run(name: str, count: int, feed: str) -> dict[str, Any]:
    return shardline(count, feed) if name == "shardline" else library(name, count, feed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--feed", choices=["discord", "padded"], default="discord")
    parser.add_argument("--only", default="shardline,discord.py,hikari")
    parser.add_argument("--cores", default="2,1", help="core counts to run on, in turn")
    args = parser.parse_args()
    names = args.only.split(",")
    every_core = os.sched_getaffinity(0)
    print(
        f"event path: {args.count:,} MESSAGE_CREATEs, feed {args.feed!r}, {args.rounds} "
        f"round(s), clients alternating (machine: {os.cpu_count()} cores)",
        flush=True,
    )
    for cores in [int(c) for c in args.cores.split(",")]:
        # children inherit the affinity: on one core, every process shares core 0
        os.sched_setaffinity(0, set(sorted(every_core)[:cores]))
        results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        try:
            for _ in range(args.rounds):
                for name in names:
                    results[name].append(run(name, args.count, args.feed))
        finally:
            os.sched_setaffinity(0, every_core)
        print(f"\n{cores} core(s):")
        print(f"  {'client':<12}{'events/s':>10}{'CPU s per 1,000 events':>26}   peak RSS (MB)")
        rates = {n: statistics.median(r["rate"] for r in rs) for n, rs in results.items()}
        per_k: dict[str, float] = {}
        for name, rs in results.items():
            cpu = {p: statistics.median(r["cpu"][p] for r in rs) for p in rs[0]["cpu"]}
            total = sum(cpu.values()) / args.count * 1000
            per_k[name] = total
            split = ", ".join(f"{p} {v / args.count * 1000:.4f}" for p, v in cpu.items())
            rss = ", ".join(f"{p} {max(r['rss'][p] for r in rs):.0f}" for p in rs[0]["rss"])
            lost = max(r["lost"] for r in rs)
            note = f"   LOST {lost:,} ({rs[-1].get('where', '')})" if lost else ""
            print(f"  {name:<12}{rates[name]:>10,.0f}{total:>12.4f}  ({split})   {rss}{note}")
        if "shardline" in rates:
            for other in (n for n in names if n != "shardline"):
                print(
                    f"  shardline / {other}: {rates['shardline'] / rates[other]:.2f}x the rate, "
                    f"{per_k['shardline'] / per_k[other]:.2f}x the CPU per event"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
