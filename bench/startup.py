"""Fleet startup time against Discord's identify bound.

For 16 and 64 shards: the emulator (its own process, Discord's 5 s identify interval,
``max_concurrency`` 16 by default) and ``shardline run``; the clock runs from starting the
supervisor until ``shardline status`` shows every shard ready. The bound is Discord's
``ceil(N / max_concurrency) x 5 s``; the fastest a fleet can go is one round less
(the first round starts at once).

Run: .venv/bin/python bench/startup.py [--shards 16,64] [--max-concurrency 16]
"""

import argparse
import math
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


def start_emulator(
    shards: int, max_concurrency: int, interval: float
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "emulator",
            "--guilds",
            str(shards * 20),
            "--shards",
            str(shards),
            "--max-concurrency",
            str(max_concurrency),
            "--identify-interval",
            str(interval),
            "--large-share",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    rest = proc.stdout.readline().split()[2].split("=", 1)[1]
    return proc, rest


def measure(shards: int, max_concurrency: int, interval: float) -> tuple[float, float, float]:
    emu, rest = start_emulator(shards, max_concurrency, interval)
    runtime_dir = Path(tempfile.mkdtemp(prefix="shardline-startup-"))
    config = runtime_dir / "bench.toml"
    config.write_text(
        f'[discord]\nrest_url = "{rest}"\n[shards]\ncount = "auto"\n'
        f'[ipc]\nruntime_dir = "{runtime_dir}"\n[log]\nlevel = "warning"\n'
    )
    env = {**os.environ, "DISCORD_TOKEN": DEFAULT_TOKEN}
    start = time.monotonic()
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "run",
            "--config",
            str(config),
            "--identify-interval",
            str(interval),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"ipc://{runtime_dir}/commands.sock"
    first_ready = 0.0
    try:
        while True:
            time.sleep(0.05)
            try:
                status = request_sync(endpoint, "shardline.status", timeout=2)["status"]
            except CommandError:
                continue
            states = [s["state"] for s in status["shards"]]
            if not first_ready and "ready" in states:
                first_ready = time.monotonic() - start
            if states and all(state == "ready" for state in states):
                return time.monotonic() - start, first_ready, time.monotonic()
    finally:
        supervisor.terminate()
        supervisor.wait(60)
        emu.terminate()
        emu.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="16,64")
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--interval", type=float, default=5.0, help="identify interval (s)")
    args = parser.parse_args()
    print(f"{'shards':>7}{'max_conc':>10}{'all ready':>11}{'first':>8}{'bound':>8}{'vs bound':>10}")
    for n in (int(x) for x in args.shards.split(",")):
        total, first, _ = measure(n, args.max_concurrency, args.interval)
        bound = math.ceil(n / args.max_concurrency) * args.interval
        print(
            f"{n:>7}{args.max_concurrency:>10}{total:>10.2f}s{first:>7.2f}s{bound:>7.1f}s"
            f"{total / bound:>9.2f}x",
            flush=True,
        )
    print("goal: within 5% of the bound (ceil(N / max_concurrency) x 5 s)")


if __name__ == "__main__":
    main()
