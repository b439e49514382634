"""Memory per idle shard: RSS and PSS for 1, 16 and 64 shards, forked from the zygote vs
exec'd as fresh interpreters (``shards.spawn``), measured side by side in one run.

PSS (proportional set size, from /proc/PID/smaps_rollup) splits each shared page between the
processes that share it, so it is what a shard really costs a host; the zygote's own PSS is
shared out over its shards. Each fleet runs under ``shardline run`` against the emulator and
is measured once every shard is ready and has idled past its memory trim.

Run: .venv/bin/python bench/memory.py [--counts 1,16,64] [--idle 8]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emulator.world import DEFAULT_TOKEN  # noqa: E402
from ipc.client import CommandError, request_sync  # noqa: E402


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
    emu = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "emulator",
            "--guilds",
            str(count * 10),
            "--shards",
            str(count),
            "--max-concurrency",
            "16",
            "--identify-interval",
            "0.05",
            "--large-share",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert emu.stdout is not None
    rest = emu.stdout.readline().split()[2].split("=", 1)[1]
    runtime_dir = Path(tempfile.mkdtemp(prefix="shardline-memory-"))
    config = runtime_dir / "bench.toml"
    config.write_text(
        f'[discord]\nrest_url = "{rest}"\n[shards]\ncount = "auto"\nspawn = "{spawn}"\n'
        f'[ipc]\nruntime_dir = "{runtime_dir}"\n[log]\nlevel = "warning"\n'
    )
    env = {**os.environ, "DISCORD_TOKEN": DEFAULT_TOKEN}
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "run",
            "--config",
            str(config),
            "--identify-interval",
            "0.05",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"ipc://{runtime_dir}/commands.sock"
    try:
        deadline = time.monotonic() + 300
        status: dict = {}
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                status = request_sync(endpoint, "shardline.status", timeout=2)["status"]
            except CommandError:
                continue
            if status["shards"] and all(s["state"] == "ready" for s in status["shards"]):
                break
        time.sleep(idle)
        status = request_sync(endpoint, "shardline.status", timeout=5)["status"]
        pids = [s["pid"] for s in status["shards"] if s["pid"]]
        figures = [smaps(pid) for pid in pids]
        zygotes = children_named(supervisor.pid, "shards.zygote")
        zygote_pss = sum(smaps(pid)[1] for pid in zygotes)
        rss = sum(f[0] for f in figures) / len(figures)
        pss = (sum(f[1] for f in figures) + zygote_pss) / len(figures)
        return {"shards": len(pids), "rss": rss / 1024, "pss": pss / 1024}
    finally:
        supervisor.terminate()
        supervisor.wait(60)
        emu.terminate()
        emu.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,16,64")
    parser.add_argument("--spawn", default="fork,exec")
    parser.add_argument("--idle", type=float, default=8.0, help="seconds idle before measuring")
    args = parser.parse_args()
    print(f"{'spawn':<7}{'shards':>7}{'RSS/shard':>11}{'PSS/shard':>11}")
    results = {}
    for spawn in args.spawn.split(","):
        for count in (int(c) for c in args.counts.split(",")):
            m = measure(count, spawn, args.idle)
            results[(spawn, count)] = m
            print(f"{spawn:<7}{m['shards']:>7}{m['rss']:>9.1f}MB{m['pss']:>9.1f}MB", flush=True)
    for count in (int(c) for c in args.counts.split(",")):
        if ("fork", count) in results and ("exec", count) in results:
            ratio = results[("exec", count)]["pss"] / results[("fork", count)]["pss"]
            print(f"{count} shards: exec costs {ratio:.2f}x the PSS of fork")
    print("goal: <= 6 MB PSS per idle shard")


if __name__ == "__main__":
    main()
