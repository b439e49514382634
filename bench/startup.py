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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import EmulatorProcess, SupervisorProcess


def measure(shards: int, max_concurrency: int, interval: float) -> tuple[float, float]:
    """Seconds until every shard is ready, and until the first one is."""
    emu = EmulatorProcess(
        guilds=shards * 20,
        shards=shards,
        max_concurrency=max_concurrency,
        identify_interval=interval,
        large_share=0,
    )
    supervisor = SupervisorProcess(emu, shards='count = "auto"', identify_interval=interval)
    first_ready = 0.0
    try:
        while True:
            time.sleep(0.05)
            status = supervisor.status()
            if status is None:
                continue
            states = [s["state"] for s in status["shards"]]
            if not first_ready and "ready" in states:
                first_ready = time.monotonic() - supervisor.started
            if states and all(state == "ready" for state in states):
                return time.monotonic() - supervisor.started, first_ready
    finally:
        supervisor.close()
        emu.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="16,64")
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--interval", type=float, default=5.0, help="identify interval (s)")
    args = parser.parse_args()
    print(f"{'shards':>7}{'max_conc':>10}{'all ready':>11}{'first':>8}{'bound':>8}{'vs bound':>10}")
    for n in (int(x) for x in args.shards.split(",")):
        total, first = measure(n, args.max_concurrency, args.interval)
        bound = math.ceil(n / args.max_concurrency) * args.interval
        print(
            f"{n:>7}{args.max_concurrency:>10}{total:>10.2f}s{first:>7.2f}s{bound:>7.1f}s"
            f"{total / bound:>9.2f}x",
            flush=True,
        )
    print("goal: within 5% of the bound (ceil(N / max_concurrency) x 5 s)")


if __name__ == "__main__":
    main()
