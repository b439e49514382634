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
- then, on two cores, ``--guilds`` newly joined large guilds (GUILD_CREATEs of ~170 KB, the
  members online and their presences) delivered to a typed ``GuildCreate`` handler, beside
  the floor (a bare websockets + zlib + orjson reader that handles nothing: what any client
  must at least spend) and the libraries (discord.py's ``on_guild_available``, hikari's
  ``GuildAvailableEvent``).

    .venv/bin/python bench/event_path.py [--count 100000] [--rounds 1] [--feed discord]
                                         [--only shardline,discord.py,hikari] [--cores 2,1]
                                         [--guilds 1000]
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
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import EmulatorProcess, SupervisorProcess, cpu_seconds, rss_mb  # noqa: E402
from shard_throughput import read_result  # noqa: E402

GUILDS = 20
# Large guilds for the GUILD_CREATE burst: their members and presences make ~170 KB each.
LARGE_MEMBERS = 760


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


def emulator(kind: str) -> EmulatorProcess:
    if kind == "guild":  # every guild large: the burst repeats their GUILD_CREATEs
        return EmulatorProcess(
            guilds=GUILDS, shards=1, large_share=1.0, large_members=LARGE_MEMBERS
        )
    return EmulatorProcess(guilds=GUILDS, shards=1)


def blast_and_measure(
    emu: EmulatorProcess,
    stdout: Any,
    pids: dict[str, int],
    count: int,
    feed: str,
    kind: str = "message",
) -> dict[str, Any]:
    """Blast ``count`` messages (or GUILD_CREATEs); the client's result line, its CPU and
    peak RSS per process."""
    peaks = PeakRss(pids)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    peaks.start()
    blast = emu.post("blast", {"shard": 0, "count": count, "kind": kind, "feed": feed})
    result = read_result(stdout)
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    rate = result["count"] / result["seconds"] if result["seconds"] else 0.0
    return {
        "rate": rate,
        "cpu": cpu,
        "rss": peaks.stop(),
        "lost": count - result["count"],
        "size": blast["bytes"] / max(blast["count"], 1),
    }


def shardline(
    count: int,
    feed: str,
    kind: str = "message",
    watch: Callable[[dict[str, int]], AbstractContextManager[Any]] = lambda pids: nullcontext(),
) -> dict[str, Any]:
    """The fleet's run; ``watch(pids)`` is entered around the blast (bench/event_profile.py
    profiles the processes with it)."""
    emu = emulator(kind)
    sup = SupervisorProcess(
        emu, shards='count = 1\nintents = ["guilds", "guild_messages", "message_content"]'
    )
    app = None
    try:
        sup.wait_all_ready()
        app = subprocess.Popen(
            [
                *(sys.executable, str(ROOT / "bench" / "event_app.py")),
                *(sup.events, sup.commands, "--count", str(count), "--kind", kind),
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
        if kind == "guild":  # the app counts GUILD_CREATEs from the next one on
            emu.post("blast", {"shard": 0, "count": 1, "kind": "message"})
            while (line := app.stdout.readline()) and line.strip() != "armed":
                pass
        with watch(pids):
            out = blast_and_measure(emu, app.stdout, pids, count, feed, kind)
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


def library(name: str, count: int, feed: str, kind: str = "message") -> dict[str, Any]:
    emu = emulator(kind)
    # (the consumers count GUILD_CREATEs only once their MESSAGE_CREATEs are all counted:
    # for the guild burst, one message arms them)
    if kind == "guild":
        expect = json.dumps({"MESSAGE_CREATE": 1, "GUILD_CREATE": count})
    else:
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
        if kind == "guild":
            emu.post("blast", {"shard": 0, "count": 1, "kind": "message"})
            read_result(proc.stdout)
        return blast_and_measure(emu, proc.stdout, {name: proc.pid}, count, feed, kind)
    finally:
        proc.kill()
        proc.wait(10)
        emu.close()


def run(name: str, count: int, feed: str, kind: str = "message") -> dict[str, Any]:
    if name == "shardline":
        return shardline(count, feed, kind)
    return library(name, count, feed, kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--feed", choices=["discord", "padded"], default="discord")
    parser.add_argument("--only", default="shardline,discord.py,hikari")
    parser.add_argument("--cores", default="2,1", help="core counts to run on, in turn")
    parser.add_argument(
        "--guilds", type=int, default=1000, help="GUILD_CREATEs in the large-guild burst (0: none)"
    )
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
        try:
            results = run_rounds(names, args.rounds, args.count, args.feed, "message")
        finally:
            os.sched_setaffinity(0, every_core)
        print(f"\n{cores} core(s):")
        show(results, args.count, "events/s")
    if args.guilds:
        names = ["shardline", "floor", *(n for n in names if n != "shardline")]
        results = run_rounds(names, args.rounds, args.guilds, args.feed, "guild")
        size = results["shardline"][0]["size"] / 1000
        print(f"\n{args.guilds:,} GUILD_CREATEs of {size:.0f} KB to a typed handler, 2 core(s):")
        show(results, args.guilds, "guilds/s")
    return 0


def run_rounds(
    names: list[str], rounds: int, count: int, feed: str, kind: str
) -> dict[str, list[dict[str, Any]]]:
    """Each round runs every client in turn (alternating, so drift hits them alike)."""
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            results[name].append(run(name, count, feed, kind))
    return results


def show(results: dict[str, list[dict[str, Any]]], count: int, unit: str) -> None:
    """The table: rate, CPU per 1,000 events (and per process), peak RSS; the ratios."""
    print(f"  {'client':<12}{unit:>10}{'CPU s per 1,000 events':>26}   peak RSS (MB)")
    rates = {n: statistics.median(r["rate"] for r in rs) for n, rs in results.items()}
    per_k: dict[str, float] = {}
    rss_total: dict[str, float] = {}
    for name, rs in results.items():
        cpu = {p: statistics.median(r["cpu"][p] for r in rs) for p in rs[0]["cpu"]}
        total = sum(cpu.values()) / count * 1000
        per_k[name] = total
        split = ", ".join(f"{p} {v / count * 1000:.4f}" for p, v in cpu.items())
        peaks = {p: max(r["rss"][p] for r in rs) for p in rs[0]["rss"]}
        rss_total[name] = sum(peaks.values())
        rss = ", ".join(f"{p} {v:.0f}" for p, v in peaks.items())
        lost = max(r["lost"] for r in rs)
        note = f"   LOST {lost:,} ({rs[-1].get('where', '')})" if lost else ""
        print(f"  {name:<12}{rates[name]:>10,.0f}{total:>12.4f}  ({split})   {rss}{note}")
    if "shardline" not in rates:
        return
    for other in (n for n in results if n != "shardline"):
        print(
            f"  shardline / {other}: {rates['shardline'] / rates[other]:.2f}x the rate, "
            f"{per_k['shardline'] / per_k[other]:.2f}x the CPU per event, "
            f"{rss_total['shardline'] / rss_total[other]:.2f}x the memory (sum of peaks)"
        )


if __name__ == "__main__":
    sys.exit(main())
