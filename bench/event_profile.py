"""Where the event path's CPU goes: bench/event_path.py's shardline run (shard -> bus -> a
typed ``MessageCreate`` handler, the Discord-shaped feed), with every process sampled by
py-spy during the blast, and the CPU per 1,000 delivered events split by stage.

Each process's CPU is read per thread from /proc: ZeroMQ's own threads (``ZMQbg/*``: the I/O
that moves bytes between sockets) are one stage; the Python threads' CPU is split in
proportion to py-spy's samples, each sample going to the stage of the innermost frame that
names one (inflate, websocket frames, the gateway protocol, publishing, ZeroMQ's receive and
send, batches, the bus's fan-out, the envelope, JSON, typed fields, the handler...).

    .venv/bin/python bench/event_profile.py [--count 100000] [--rate 200] [--kind guild]

(py-spy comes with the ``[bench]`` extra. The figure to quote is the split, beside the
total measured in the same run; sampling costs the processes a few percent.)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import event_path  # noqa: E402

# Per process: (stage, what a frame's text contains), the first rule a frame matches wins;
# frames are tried from the innermost out.
STAGES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "shard": [
        ("inflate (zlib)", ("shards/inflate.py",)),
        ("publish: envelope, batch, ZeroMQ send", ("ipc/links.py", "pack_batch")),
        ("websocket frames", ("conn/websocket.py",)),
        ("gateway protocol (type, seq)", ("shards/protocol.py",)),
        ("shard loop and inbox", ("shards/loop.py", "conn/inbox.py")),
    ],
    "supervisor": [
        ("batches (index, repack)", ("_batch_index", "batch_topics", "unpack_batch", "pack_batch")),
        ("ZeroMQ receive", ("recv_multipart",)),
        ("ZeroMQ send", ("EventBus._send",)),
        ("bus: fan-out, queues", ("runtime/bus.py",)),
        ("supervisor: control, status", ("runtime/",)),
    ],
    "app": [
        ("batches (unpack)", ("_batch_index", "unpack_batch", "bus_messages")),
        ("ZeroMQ receive", ("recv_multipart", "zmq/")),
        ("envelope", ("Envelope.decode",)),
        ("JSON (orjson) and typing", ("decode_gateway_event",)),
        ("typed field access", ("ipc/fields.py",)),
        ("the handler", ("event_app.py",)),
        ("dispatch: seq, handlers", ("ipc/handlers.py", "ipc/client.py", "decode_bus")),
    ],
}
ZMQ_THREADS = "ZeroMQ I/O threads"
OTHER = "event loop, other"


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed) of a process so far."""
    out: dict[str, float] = collections.defaultdict(float)
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return out


def stage_of(stack: list[str], rules: list[tuple[str, tuple[str, ...]]]) -> str:
    for frame in reversed(stack):
        for stage, needles in rules:
            if any(needle in frame for needle in needles):
                return stage
    return OTHER


def split(samples: Path, rules: list[tuple[str, tuple[str, ...]]]) -> dict[str, float]:
    """Each stage's share of a process's Python samples (py-spy's raw format)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in samples.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            counts[stage_of(stack.split(";"), rules)] += int(number)
    total = sum(counts.values()) or 1
    return {stage: n / total for stage, n in counts.items()}


class Profiler:
    """py-spy on each process during the blast, and their per-thread CPU around it."""

    def __init__(self, rate: int, workdir: Path) -> None:
        self.rate = rate
        self.workdir = workdir
        self.cpu: dict[str, dict[str, float]] = {}
        self.files: dict[str, Path] = {}

    @contextlib.contextmanager
    def watch(self, pids: dict[str, int]) -> Iterator[None]:
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        spies = []
        for name, pid in pids.items():
            self.files[name] = self.workdir / f"{name}.txt"
            spies.append(
                subprocess.Popen(
                    [
                        *(py_spy, "record", "--pid", str(pid), "--rate", str(self.rate)),
                        *("--format", "raw", "--output", str(self.files[name]), "--nonblocking"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        before = {name: thread_cpu(pid) for name, pid in pids.items()}
        try:
            yield
        finally:
            for name, pid in pids.items():
                after = thread_cpu(pid)
                self.cpu[name] = {t: after[t] - before[name].get(t, 0.0) for t in after}
            for spy in spies:
                spy.send_signal(2)  # py-spy writes its samples on SIGINT
            for spy in spies:
                spy.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples a second")
    parser.add_argument(
        "--kind", choices=["message", "guild"], default="message", help="guild: large GUILD_CREATEs"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        profiler = Profiler(args.rate, Path(tmp))
        result: dict[str, Any] = event_path.shardline(
            args.count, "discord", args.kind, watch=profiler.watch
        )
        what = (
            "MESSAGE_CREATEs (Discord-shaped feed)"
            if args.kind == "message"
            else (f"GUILD_CREATEs of {result['size'] / 1000:.0f} KB")
        )
        print(
            f"event path CPU by stage: {args.count:,} {what}, "
            f"{result['rate']:,.0f} events/s, lost {result['lost']:,}; "
            "CPU seconds per 1,000 delivered events"
        )
        grand = 0.0
        for name, threads in profiler.cpu.items():
            zmq_cpu = sum(v for t, v in threads.items() if t.startswith("ZMQbg"))
            python_cpu = sum(threads.values()) - zmq_cpu
            shares = split(profiler.files[name], STAGES[name])
            stages = {stage: python_cpu * share for stage, share in shares.items()}
            stages[ZMQ_THREADS] = zmq_cpu
            total = sum(stages.values())
            grand += total
            print(f"\n  {name}: {total / args.count * 1000:.4f}")
            for stage, cpu in sorted(stages.items(), key=lambda kv: -kv[1]):
                share = cpu / total if total else 0.0
                print(f"    {stage:<40}{cpu / args.count * 1000:.4f}  {share:6.1%}")
        print(f"\n  all three: {grand / args.count * 1000:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
