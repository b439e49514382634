"""Shard -> application latency through the supervisor's bus, and an application's typed rate.

Processes: the emulator (``shardline emulator``), the supervisor (``shardline run``) with one
shard process, and this script as the application (an ``ipc.Client``).

1. Latency: the emulator streams MESSAGE_CREATEs at 1k/s and 10k/s; the application takes
   ``time.time_ns()`` when its handler runs and subtracts the envelope's ``received_ns`` (when
   the shard read the frame): p50 / p99 / max.
2. Typed rate: the emulator blasts MESSAGE_CREATEs as fast as the shard takes them; the rate at
   which the application's ``@client.on(MessageCreate)`` handler runs (decode included), beside
   discord.py's ``on_message`` and hikari's listener on the same feed (bench/shard_throughput.py
   runs those consumers).

Run: .venv/bin/python bench/bus_latency.py [--seconds 5] [--blast 100000] [--no-libs]
"""

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import EmulatorProcess, SupervisorProcess  # noqa: E402
from shard_throughput import feed_emulator, run_consumer  # noqa: E402

from ipc.client import Client  # noqa: E402
from ipc.codec import Envelope  # noqa: E402
from ipc.events import MessageCreate  # noqa: E402


async def wait_ready(client: Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = await client.request("shardline.status", {}, timeout=2)
            if all(s["state"] == "ready" for s in reply["status"]["shards"]):
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the fleet never became ready")


class Recorder:
    """The application: a typed handler that notes latency and counts."""

    def __init__(self, client: Client) -> None:
        self.latencies: list[int] = []
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.envelope_ns = 0
        original = client._dispatch

        async def spy(frames: list[bytes]) -> None:
            self.envelope_ns = Envelope.decode(frames[1]).received_ns
            await original(frames)

        client._dispatch = spy  # type: ignore[method-assign]

        @client.on(MessageCreate)
        def on_message(event: MessageCreate) -> None:
            now = time.time_ns()
            _ = event.content  # a typed read, as a real handler would
            self.latencies.append(now - self.envelope_ns)
            self.count += 1
            t = time.perf_counter()
            if self.count == 1:
                self.first = t
            self.last = t

    def reset(self) -> None:
        self.latencies.clear()
        self.count = 0


async def measure_latency(
    emu: EmulatorProcess, rec: Recorder, rate: int, seconds: float
) -> dict[str, float]:
    rec.reset()
    count = int(rate * seconds)
    await asyncio.to_thread(emu.post, "stream", {"shard": 0, "rate": rate, "count": count})
    deadline = time.monotonic() + seconds * 3 + 10
    while rec.count < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    values = sorted(rec.latencies[len(rec.latencies) // 20 :])  # skip the first 5%: warm-up
    q = statistics.quantiles(values, n=100)
    return {"count": rec.count, "p50": q[49] / 1e6, "p99": q[98] / 1e6, "max": values[-1] / 1e6}


async def measure_rate(emu: EmulatorProcess, rec: Recorder, count: int) -> float:
    rec.reset()
    await asyncio.to_thread(emu.post, "blast", {"shard": 0, "count": count, "kind": "message"})
    deadline = time.monotonic() + 120
    while rec.count < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return rec.count / (rec.last - rec.first) if rec.last > rec.first else 0.0


async def run(args: argparse.Namespace) -> None:
    emu = feed_emulator()
    supervisor = SupervisorProcess(
        emu, shards='count = 1\nintents = ["guilds", "guild_messages", "message_content"]'
    )
    client = Client(supervisor.events, supervisor.commands)
    client.connect([b"MESSAGE_CREATE "])
    rec = Recorder(client)
    receiver = asyncio.create_task(client.run())
    try:
        await wait_ready(client)
        await asyncio.sleep(0.5)
        latency = {
            rate: await measure_latency(emu, rec, rate, args.seconds) for rate in (1000, 10000)
        }
        rate = await measure_rate(emu, rec, args.blast)
    finally:
        receiver.cancel()
        client.close()
        supervisor.close()
        emu.close()
    libs: dict[str, float] = {}
    if not args.no_libs:
        for name in ("discord.py", "hikari"):
            lib_emu = feed_emulator()
            try:
                result = run_consumer(name, lib_emu, args.blast, 1)
            finally:
                lib_emu.close()
            if "MESSAGE_CREATE" in result:
                count, seconds, _ = result["MESSAGE_CREATE"]
                libs[name] = count / seconds
            else:
                print(f"{name}: {result.get('error')}", file=sys.stderr)

    print("\nshard -> application latency (envelope received_ns to the typed handler)")
    print(f"{'rate':>10}{'events':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for r, m in latency.items():
        print(f"{r:>8}/s{m['count']:>9}{m['p50']:>9.3f}{m['p99']:>9.3f}{m['max']:>9.3f}")
    print("\ntyped MESSAGE_CREATE handler rate, shard fed as fast as it takes them")
    print(f"  ipc.Client @client.on(MessageCreate): {rate:>10,.0f}/s")
    for name, value in libs.items():
        print(f"  {name:<36} {value:>10,.0f}/s   (ipc.Client: {rate / value:.2f}x)")
    print("goals: p99 < 1 ms at 1k/s; typed rate >= 2x the faster library")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per latency rate")
    parser.add_argument("--blast", type=int, default=100_000, help="messages for the rate test")
    parser.add_argument("--no-libs", action="store_true", help="skip discord.py and hikari")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
