"""The latency floor of the bus's hops on this machine, with no shardline code in them.

Three processes stand in for a shard, the supervisor's bus and an application: a PUB that
sends three-frame messages (topic, a stamp, a body the size of a MESSAGE_CREATE) at a steady
rate, an XSUB -> XPUB ``zmq.proxy``, and an asyncio SUB here that notes arrival minus stamp.
That is the path an event takes through shardline minus our code, so shardline's latency
measured beside it (bench/bus_latency.py) shows what our code adds and what the machine costs.

Run: .venv/bin/python bench/zmq_floor.py [--rate 1000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

BODY = b"x" * 1400  # about a MESSAGE_CREATE's JSON


def _proxy(bus_in: str, bus_out: str, ready: Any) -> None:
    ctx = zmq.Context()
    xsub = ctx.socket(zmq.XSUB)
    xsub.bind(bus_in)
    xpub = ctx.socket(zmq.XPUB)
    xpub.bind(bus_out)
    ready.set()
    zmq.proxy(xsub, xpub)


def _publish(bus_in: str, rate: float, count: int, go: Any) -> None:
    sock = zmq.Context().socket(zmq.PUB)
    sock.connect(bus_in)
    go.wait()
    start = time.monotonic()
    for sent in range(count):
        due = start + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.send_multipart([b"MESSAGE_CREATE ", b"%d" % time.time_ns(), BODY])
    sock.close(linger=2000)


async def _receive(sub: zmq.asyncio.Socket, count: int, timeout: float) -> list[int]:
    """Await one message, then take whatever else is queued without awaiting (as
    ``ipc.Client`` does): the cheapest asyncio receiver."""
    latencies: list[int] = []
    sync: zmq.Socket[Any] = zmq.Socket.shadow(sub.underlying)
    deadline = time.monotonic() + timeout
    while len(latencies) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            frames = await asyncio.wait_for(sub.recv_multipart(), left)
        except TimeoutError:
            break
        while True:
            latencies.append(time.time_ns() - int(frames[1]))
            try:
                frames = sync.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
    return latencies


def summary(latencies_ns: list[int]) -> dict[str, float]:
    """Count and p50 / p99 / max in ms."""
    values = sorted(latencies_ns)
    q = statistics.quantiles(values, n=100)
    return {
        "count": len(values),
        "p50": q[49] / 1e6,
        "p99": q[98] / 1e6,
        "max": values[-1] / 1e6,
    }


def measure(rate: int, seconds: float) -> list[int]:
    """Latencies in ns of ``rate``/s messages for ``seconds`` through the bare chain (the
    first 5% left out, as warm-up)."""
    mp = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="shardline-floor-") as tmp:
        bus_in, bus_out = f"ipc://{Path(tmp)}/in.sock", f"ipc://{Path(tmp)}/out.sock"
        ready, go = mp.Event(), mp.Event()
        count = int(rate * seconds)
        proxy = mp.Process(target=_proxy, args=(bus_in, bus_out, ready), daemon=True)
        proxy.start()
        publisher = mp.Process(target=_publish, args=(bus_in, rate, count, go), daemon=True)
        try:
            if not ready.wait(30):
                raise RuntimeError("the proxy process did not start")
            publisher.start()

            async def run() -> list[int]:
                ctx = zmq.asyncio.Context()
                sub = ctx.socket(zmq.SUB)
                sub.setsockopt(zmq.SUBSCRIBE, b"MESSAGE_CREATE ")
                sub.connect(bus_out)
                await asyncio.sleep(1.0)  # subscriptions travel up to the publisher
                go.set()
                try:
                    return await _receive(sub, count, seconds * 3 + 10)
                finally:
                    sub.close(linger=0)
                    ctx.term()

            latencies = asyncio.run(run())
        finally:
            for proc in (publisher, proxy):
                if proc.is_alive():
                    proc.terminate()
                proc.join(5)
    if len(latencies) < count // 2:
        raise RuntimeError(f"only {len(latencies)} of {count} messages came through")
    return latencies[len(latencies) // 20 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    m = summary(measure(args.rate, args.seconds))
    print(f"{args.rate}/s: p50 {m['p50']:.3f} ms, p99 {m['p99']:.3f} ms, max {m['max']:.3f} ms")


if __name__ == "__main__":
    main()
