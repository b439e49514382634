"""Shard throughput: one shard process fed by the emulator over zlib-stream, onto the bus.

The emulator (its own process) pre-renders a feed of ~1 KB MESSAGE_CREATEs and a burst of
large GUILD_CREATEs and sends each as fast as the consumer takes it. Consumers, one at a time,
each in its own process, on the same feed:

  shardline   python -m shards publishing to a ZeroMQ bus; counted at the bus (this process)
  floor       a bare websockets + zlib + orjson reader that publishes nothing
  discord.py  discord.Client, counting on_message / on_guild_available
  hikari      hikari.GatewayBot without cache, counting MessageCreateEvent / GuildAvailableEvent

Prints dispatches/s and MB/s (of inflated JSON) per consumer, the ratios to the floor, and the
shard process's idle RSS. Run: .venv/bin/python bench/shard_throughput.py [--messages N]
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import FEED, ROOT, EmulatorProcess

from ipc.codec import bus_messages
from ipc.workerargs import ShardArgs

INTENTS = (1 << 0) | (1 << 8) | (1 << 9) | (1 << 15)  # guilds, presences, messages, content
GUILDS = 20
LARGE_MEMBERS = 1000


def feed_emulator() -> EmulatorProcess:
    """The emulator every consumer here reads from: half the guilds large."""
    return EmulatorProcess(guilds=GUILDS, large_share=0.5, large_members=LARGE_MEMBERS)


# -- consumers that run as their own process (--consumer NAME) --------------------------------


def consumer_floor(gateway: str, token: str, expect: dict[str, int]) -> None:
    import orjson
    from websockets.asyncio.client import connect

    async def run() -> None:
        async with connect(
            f"{gateway}/?v=10&encoding=json&compress=zlib-stream",
            max_size=None,
            compression=None,
            ping_interval=None,
        ) as ws:
            inflate = zlib.decompressobj()
            buf = b""
            counts = dict.fromkeys(expect, 0)
            first: dict[str, float] = {}
            nbytes = dict.fromkeys(expect, 0)
            identified = False
            async for message in ws:
                buf += message  # type: ignore[operator]
                if not buf.endswith(b"\x00\x00\xff\xff"):
                    continue
                data = inflate.decompress(buf)
                buf = b""
                payload = orjson.loads(data)
                if payload["op"] == 10 and not identified:
                    identified = True
                    await ws.send(
                        orjson.dumps(
                            {
                                "op": 2,
                                "d": {
                                    "token": token,
                                    "intents": INTENTS,
                                    "properties": {},
                                    "shard": [0, 1],
                                    "large_threshold": 250,
                                },
                            }
                        ).decode()
                    )
                    continue
                t = payload.get("t")
                if t == "READY":
                    print("ready", flush=True)
                if t in counts and (t != "GUILD_CREATE" or first.get("armed")):
                    first.setdefault(t, time.perf_counter())
                    counts[t] += 1
                    nbytes[t] += len(data)
                    if counts[t] == expect[t]:
                        report(t, counts[t], time.perf_counter() - first[t], nbytes[t])
                        if t == "MESSAGE_CREATE":
                            first["armed"] = 1.0  # initial GUILD_CREATEs are not the burst
                        if all(counts[k] == expect[k] for k in expect):
                            return

    asyncio.run(run())


def consumer_discord_py(gateway: str, rest: str, token: str, expect: dict[str, int]) -> None:
    import discord
    import yarl
    from discord.gateway import DiscordWebSocket

    discord.http.Route.BASE = rest
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
    intents = discord.Intents.default()
    intents.message_content = True
    intents.presences = True
    intents.members = False
    client = discord.Client(intents=intents, chunk_guilds_at_startup=False)
    counter = Counter(expect, client.close)
    state, hit = counter.state, counter.hit

    @client.event
    async def on_ready() -> None:
        print("ready", flush=True)

    @client.event
    async def on_message(message: Any) -> None:
        hit("MESSAGE_CREATE")

    @client.event
    async def on_guild_available(guild: Any) -> None:
        if state["armed"]:
            hit("GUILD_CREATE")

    client.run(token, log_handler=None)


def consumer_hikari(gateway: str, rest: str, token: str, expect: dict[str, int]) -> None:
    import hikari

    bot = hikari.GatewayBot(
        token,
        rest_url=rest,
        banner=None,
        suppress_optimization_warning=True,
        intents=hikari.Intents(INTENTS),
        cache_settings=hikari.impl.CacheSettings(components=hikari.api.CacheComponents.NONE),
    )
    counter = Counter(expect, bot.close)
    state, hit = counter.state, counter.hit

    @bot.listen(hikari.StartedEvent)
    async def started(event: hikari.StartedEvent) -> None:
        print("ready", flush=True)

    @bot.listen(hikari.MessageCreateEvent)
    async def message(event: hikari.MessageCreateEvent) -> None:
        hit("MESSAGE_CREATE")

    @bot.listen(hikari.GuildAvailableEvent)
    async def guild(event: hikari.GuildAvailableEvent) -> None:
        if state["armed"]:
            hit("GUILD_CREATE")

    bot.run(check_for_updates=False, close_loop=True)


class Counter:
    """Counts a library's events; reports each type when its expected count is reached, and
    closes the library when all are. GUILD_CREATEs count only after the messages (the ones
    at login are not the burst)."""

    def __init__(self, expect: dict[str, int], close: Any) -> None:
        self.expect = expect
        self.close = close
        self.state: dict[str, Any] = {"MESSAGE_CREATE": 0, "GUILD_CREATE": 0, "armed": False}

    def hit(self, t: str) -> None:
        state = self.state
        state.setdefault(f"first_{t}", time.perf_counter())
        state[t] += 1
        if state[t] == self.expect[t]:
            report(t, state[t], time.perf_counter() - state[f"first_{t}"], 0)
            if t == "MESSAGE_CREATE":
                state["armed"] = True
            if all(state[k] == self.expect[k] for k in self.expect):
                asyncio.get_running_loop().create_task(self.close())


def report(t: str, count: int, seconds: float, nbytes: int) -> None:
    print(
        "result " + json.dumps({"t": t, "count": count, "seconds": seconds, "bytes": nbytes}),
        flush=True,
    )


# -- the shardline shard, counted at the bus ---------------------------------------------------


class BusCounter(threading.Thread):
    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.bind(endpoint)
        self.counts: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            try:
                messages = bus_messages(self.sock.recv_multipart())  # a batch, or one
            except Exception:
                return
            now = time.perf_counter()
            for topic, _envelope, body in messages:
                t = topic.split(b" ", 1)[0].decode()
                with self.lock:
                    self.first.setdefault(t, now)
                    self.last[t] = now
                    self.counts[t] = self.counts.get(t, 0) + 1
                    self.bytes[t] = self.bytes.get(t, 0) + len(body)

    def reset(self, t: str) -> None:
        with self.lock:
            self.counts[t] = 0
            self.bytes[t] = 0
            self.first.pop(t, None)

    def wait(self, t: str, count: int, timeout: float = 300) -> tuple[float, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.counts.get(t, 0) >= count:
                    return self.last[t] - self.first[t], self.bytes[t]
            time.sleep(0.01)
        raise TimeoutError(f"bus saw {self.counts.get(t, 0)} of {count} {t}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_shardline(emu: EmulatorProcess, messages: int, guilds: int) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="shardline-bench-")
    endpoint = f"ipc://{tmp}/bus.sock"
    bus = BusCounter(endpoint)
    bus.start()
    env = {**os.environ, "DISCORD_TOKEN": emu.token}
    args = ShardArgs(
        shard_id=0,
        shard_count=1,
        gateway=emu.gateway,
        events=endpoint,
        intents=str(INTENTS),
        identify_interval=0.0,
        log_level="warning",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "shards", *args.to_argv()],
        env=env,
        cwd=ROOT,
    )
    try:
        bus.wait("GUILD_CREATE", GUILDS, timeout=60)
        time.sleep(7.0)  # idle long enough for the shard to trim after its startup burst
        idle_rss = rss_kib(proc.pid)
        emu.post("blast", {"shard": 0, "count": messages, "kind": "message"})
        seconds, nbytes = bus.wait("MESSAGE_CREATE", messages)
        out: dict[str, Any] = {"idle_rss_kib": idle_rss}
        out["MESSAGE_CREATE"] = (messages, seconds, nbytes)
        bus.reset("GUILD_CREATE")
        emu.post("blast", {"shard": 0, "count": guilds, "kind": "guild"})
        seconds, nbytes = bus.wait("GUILD_CREATE", guilds)
        out["GUILD_CREATE"] = (guilds, seconds, nbytes)
        return out
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def read_result(stream: Any) -> Any:
    while line := stream.readline():
        if line.startswith("result "):
            return json.loads(line.removeprefix("result "))
    raise RuntimeError("the consumer exited without a result")


def run_consumer(name: str, emu: EmulatorProcess, messages: int, guilds: int) -> dict[str, Any]:
    expect = json.dumps({"MESSAGE_CREATE": messages, "GUILD_CREATE": guilds})
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--consumer",
            name,
            "--gateway",
            emu.gateway,
            "--rest",
            emu.rest,
            "--token",
            emu.token,
            "--expect",
            expect,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    out: dict[str, Any] = {}
    try:
        while (line := proc.stdout.readline()) and line.strip() != "ready":
            pass  # a library's own output
        if not line:
            raise RuntimeError(f"{name} exited before it was ready")
        time.sleep(1.0)  # let startup GUILD_CREATEs drain
        emu.post("blast", {"shard": 0, "count": messages, "kind": "message"})
        result = read_result(proc.stdout)
        out["MESSAGE_CREATE"] = (result["count"], result["seconds"], result["bytes"])
        emu.post("blast", {"shard": 0, "count": guilds, "kind": "guild"})
        result = read_result(proc.stdout)
        out["GUILD_CREATE"] = (result["count"], result["seconds"], result["bytes"])
    except Exception as exc:
        out["error"] = repr(exc)
    finally:
        proc.kill()
        proc.wait(10)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Shard throughput against the emulator.")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--guilds", type=int, default=2_000, help="GUILD_CREATEs in the burst")
    parser.add_argument("--only", help="comma-separated consumers to run")
    parser.add_argument("--consumer", help=argparse.SUPPRESS)
    parser.add_argument("--gateway", help=argparse.SUPPRESS)
    parser.add_argument("--rest", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--expect", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consumer:
        expect = json.loads(args.expect)
        if args.consumer == "floor":
            consumer_floor(args.gateway, args.token, expect)
        elif args.consumer == "discord.py":
            consumer_discord_py(args.gateway, args.rest, args.token, expect)
        elif args.consumer == "hikari":
            consumer_hikari(args.gateway, args.rest, args.token, expect)
        return

    print(FEED, flush=True)
    names = (args.only or "shardline,floor,discord.py,hikari").split(",")
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        emu = feed_emulator()  # a fresh emulator per consumer: same feed, no leftovers
        try:
            if name == "shardline":
                results[name] = run_shardline(emu, args.messages, args.guilds)
            else:
                emu_results = run_consumer(name, emu, args.messages, args.guilds)
                results[name] = emu_results
        finally:
            emu.close()
        print(f"  measured {name}: {results[name]}", file=sys.stderr)

    floor = results.get("floor", {})
    print(
        f"\n{'consumer':<12}{'event':<16}{'count':>8}{'per second':>14}{'MB/s':>9}{'vs floor':>10}"
    )
    for name, res in results.items():
        if "error" in res:
            print(f"{name:<12}failed: {res['error']}")
            continue
        for t in ("MESSAGE_CREATE", "GUILD_CREATE"):
            count, seconds, nbytes = res[t]
            rate = count / seconds if seconds else float("inf")
            mbps = f"{nbytes / seconds / 1e6:.1f}" if nbytes else "-"
            ratio = ""
            if t in floor:
                fc, fs, _ = floor[t]
                ratio = f"{rate / (fc / fs):.2f}x"
            print(f"{name:<12}{t:<16}{count:>8}{rate:>14,.0f}{mbps:>9}{ratio:>10}")
    if "shardline" in results and "idle_rss_kib" in results["shardline"]:
        print(f"\nshard process idle RSS: {results['shardline']['idle_rss_kib'] / 1024:.1f} MiB")
    print(
        "goals: >= 90k MESSAGE_CREATE/s and >= 900 large GUILD_CREATE/s onto the bus, RSS <= 30 MB"
    )


if __name__ == "__main__":
    main()
