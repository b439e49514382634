"""Shard -> application latency through the supervisor's bus, and an application's typed rate.

Processes: the emulator (``shardline emulator``), the supervisor (``shardline run``) with one
shard process, and this script as the application (an ``ipc.Client``).

1. Latency: the emulator streams MESSAGE_CREATEs at 1k/s and 10k/s; the application takes
   ``time.time_ns()`` when its handler runs and subtracts the envelope's ``received_ns`` (when
   the shard read the frame): p50 / p99 / max. Beside each rate, the same rate through the
   same hops with no shardline code in them (bench/zmq_floor.py): what this machine costs.
2. Typed rate: the emulator blasts MESSAGE_CREATEs as fast as the shard takes them; the rate at
   which the application's ``@client.on(MessageCreate)`` handler runs (decode included), beside
   discord.py's ``on_message`` and hikari's listener on the same feed (bench/shard_throughput.py
   runs those consumers).

Run: .venv/bin/python bench/bus_latency.py [--seconds 5] [--rounds 3] [--blast 100000] [--no-libs]
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import FEED, EmulatorProcess, SupervisorProcess, cpu_seconds  # noqa: E402
from shard_throughput import feed_emulator, run_consumer  # noqa: E402
from zmq_floor import measure as measure_floor  # noqa: E402
from zmq_floor import summary  # noqa: E402

from ipc.client import Client  # noqa: E402
from ipc.codec import Envelope  # noqa: E402
from ipc.events import MessageCreate  # noqa: E402
from ipc.requests import GetStatus, StatusReply  # noqa: E402


async def wait_ready(client: Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = await client.ask(GetStatus(), StatusReply, timeout=2)
            if all(s["state"] == "ready" for s in reply.status["shards"]):
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the fleet never became ready")


class Recorder:
    """The application: a typed handler that counts, and notes latency while timing."""

    def __init__(self, client: Client) -> None:
        self.latencies: list[int] = []
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.envelope_ns = 0
        self.timing = False
        self._client = client
        self._dispatch = client._dispatch

        async def spy(frames: list[bytes]) -> None:
            self.envelope_ns = Envelope.decode(frames[1]).received_ns
            await self._dispatch(frames)

        self._spy = spy

        @client.on(MessageCreate)
        def on_message(event: MessageCreate) -> None:
            _ = event.content  # a typed read, as a real handler would
            if self.timing:
                self.latencies.append(time.time_ns() - self.envelope_ns)
            self.count += 1
            t = time.perf_counter()
            if self.count == 1:
                self.first = t
            self.last = t

    def reset(self, *, timing: bool) -> None:
        """Start counting again; with ``timing``, every event's envelope is read for its
        ``received_ns`` (the rate test leaves that out: it is the bench's cost, not ours)."""
        self.latencies.clear()
        self.count = 0
        self.timing = timing
        self._client._dispatch = self._spy if timing else self._dispatch  # type: ignore[method-assign]


async def measure_latency(
    emu: EmulatorProcess, rec: Recorder, rate: int, seconds: float, pids: dict[str, int]
) -> tuple[list[int], dict[str, float]]:
    """Latencies in ns (the first 5% left out, as warm-up), and the share of a core each
    process in ``pids`` used meanwhile."""
    rec.reset(timing=True)
    count = int(rate * seconds)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    await asyncio.to_thread(emu.post, "stream", {"shard": 0, "rate": rate, "count": count})
    deadline = time.monotonic() + seconds * 3 + 10
    while rec.count < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    cpu = {name: (cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}
    if rec.count < count:
        print(f"{rate}/s: only {rec.count} of {count} events arrived", file=sys.stderr)
    return rec.latencies[len(rec.latencies) // 20 :], cpu


async def measure_rate(emu: EmulatorProcess, rec: Recorder, count: int) -> float:
    rec.reset(timing=False)
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
        status = supervisor.status(timeout=5) or {"shards": []}
        pids = {
            "emulator": emu.proc.pid,
            "supervisor": supervisor.proc.pid,
            "shard": int(status["shards"][0]["pid"]),
            "application": os.getpid(),
        }
        # Each rate alternates with the bare chain, round after round, so that both see the
        # same machine: here its noise comes and goes over seconds.
        ours: dict[int, list[int]] = {1000: [], 10000: []}
        bare: dict[int, list[int]] = {1000: [], 10000: []}
        cores: dict[int, list[dict[str, float]]] = {1000: [], 10000: []}
        for _ in range(args.rounds):
            for per_second in ours:
                values, cpu = await measure_latency(emu, rec, per_second, args.seconds, pids)
                ours[per_second] += values
                cores[per_second].append(cpu)
                bare[per_second] += await asyncio.to_thread(measure_floor, per_second, args.seconds)
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

    print(
        "\nshard -> application latency (envelope received_ns to the typed handler),"
        f" {args.rounds} rounds of {args.seconds:g} s per rate"
    )
    print(f"{'rate':>10}{'events':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    latency = {r: summary(values) for r, values in ours.items()}
    for r, m in latency.items():
        shares = {name: statistics.mean(c[name] for c in cores[r]) for name in pids}
        used = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
        row = f"{r:>8}/s{m['count']:>9}{m['p50']:>9.3f}{m['p99']:>9.3f}{m['max']:>9.3f}"
        print(f"{row}   cores: {used}")
    print("the same rates, rounds in turn, through a bare ZeroMQ pub -> proxy -> asyncio sub")
    print("(bench/zmq_floor.py: the same hops with no shardline code; this machine's floor)")
    for r, values in bare.items():
        m = summary(values)
        print(
            f"{r:>8}/s{m['count']:>9}{m['p50']:>9.3f}{m['p99']:>9.3f}{m['max']:>9.3f}"
            f"   shardline p50 = {latency[r]['p50'] / m['p50']:.2f}x, p99 = "
            f"{latency[r]['p99'] / m['p99']:.2f}x this"
        )
    print("\ntyped MESSAGE_CREATE handler rate, shard fed as fast as it takes them")
    print(f"  ipc.Client @client.on(MessageCreate): {rate:>10,.0f}/s")
    for name, value in libs.items():
        print(f"  {name:<36} {value:>10,.0f}/s   (ipc.Client: {rate / value:.2f}x)")
    print("goals: p99 < 1 ms at 1k/s; typed rate >= 2x the faster library")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per rate per round")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds per rate")
    parser.add_argument("--blast", type=int, default=100_000, help="messages for the rate test")
    parser.add_argument("--no-libs", action="store_true", help="skip discord.py and hikari")
    args = parser.parse_args()
    print(FEED, flush=True)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds above 0")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
