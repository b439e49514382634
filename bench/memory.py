"""Memory per idle shard: RSS and PSS for 1, 16 and 64 shards, forked from the zygote vs
exec'd as fresh interpreters (``shards.spawn``), measured side by side in one run.

PSS (proportional set size, from /proc/PID/smaps_rollup) splits each shared page between the
processes that share it, so it is what a shard really costs a host; the zygote's own PSS is
shared out over its shards. Each fleet runs under ``shardline run`` against the emulator and
is measured once every shard is ready and has idled past its memory trim; the emulator asks
for a heartbeat every 2 s, so every shard has run its heartbeat path by then too (at Discord's
~41 s an 8 s idle would usually measure a shard that had not heartbeated yet).

PSS/shard includes that share; the "alone" column is a shard by itself, the "zygote" column
the zygote's own PSS.

Run: .venv/bin/python bench/memory.py [--counts 1,16,64] [--idle 8]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import EmulatorProcess, SupervisorProcess


def smaps(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def children_named(parent: int, needle: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and needle in cmdline:
            out.append(int(entry.name))
    return out


def measure(count: int, spawn: str, idle: float) -> dict[str, float]:
    emu = EmulatorProcess(
        guilds=count * 10,
        shards=count,
        max_concurrency=16,
        identify_interval=0.05,
        large_share=0,
        heartbeat_interval=2000,
    )
    supervisor = SupervisorProcess(
        emu, shards=f'count = "auto"\nspawn = "{spawn}"', identify_interval=0.05
    )
    try:
        supervisor.wait_all_ready()
        time.sleep(idle)
        status = supervisor.status(timeout=5)
        assert status is not None
        pids = [s["pid"] for s in status["shards"] if s["pid"]]
        figures = [smaps(pid) for pid in pids]
        zygote_pss = sum(smaps(pid)[1] for pid in children_named(supervisor.proc.pid, "zygote"))
        rss = sum(f[0] for f in figures) / len(figures)
        alone = sum(f[1] for f in figures) / len(figures)
        pss = alone + zygote_pss / len(figures)
        return {
            "shards": len(pids),
            "rss": rss / 1024,
            "alone": alone / 1024,
            "zygote": zygote_pss / 1024,
            "pss": pss / 1024,
        }
    finally:
        supervisor.close()
        emu.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,16,64")
    parser.add_argument("--spawn", default="fork,exec")
    parser.add_argument("--idle", type=float, default=8.0, help="seconds idle before measuring")
    args = parser.parse_args()
    # PSS/shard is what a shard costs the host: its own PSS plus its share of the zygote's.
    # "alone" leaves the zygote out (a forked process by itself); "zygote" is the zygote's
    # whole PSS, which a larger fleet spreads thinner.
    print(f"{'spawn':<7}{'shards':>7}{'RSS/shard':>11}{'alone':>9}{'zygote':>9}{'PSS/shard':>11}")
    results = {}
    for spawn in args.spawn.split(","):
        for count in (int(c) for c in args.counts.split(",")):
            m = measure(count, spawn, args.idle)
            results[(spawn, count)] = m
            print(
                f"{spawn:<7}{m['shards']:>7}{m['rss']:>9.1f}MB{m['alone']:>7.1f}MB"
                f"{m['zygote']:>7.1f}MB{m['pss']:>9.1f}MB",
                flush=True,
            )
    for count in (int(c) for c in args.counts.split(",")):
        if ("fork", count) in results and ("exec", count) in results:
            ratio = results[("exec", count)]["pss"] / results[("fork", count)]["pss"]
            print(f"{count} shards: exec costs {ratio:.2f}x the PSS of fork")
    print("goal: <= 6 MB PSS per idle shard (PSS/shard, the zygote's share included)")


if __name__ == "__main__":
    main()
