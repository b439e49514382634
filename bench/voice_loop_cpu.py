"""CPU a voice session's loop spends per second of playback, without the rest of a process:
the emulator runs in a thread of its own, the session in the main thread, and the main
thread's CPU time is read around each play of ``examples/sample.opus`` (Ogg Opus, passed
through). Prints ms of CPU per second of audio, one figure per round.

    .venv/bin/python bench/voice_loop_cpu.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emulator import Emulator  # noqa: E402
from tests.voiceworker.test_session import new_session, voice_emulator  # noqa: E402
from voiceworker.audio import open_source  # noqa: E402

SAMPLE = ROOT / "examples" / "sample.opus"


def start_emulator() -> tuple[Emulator, threading.Event, threading.Thread]:
    """The emulator on a loop in its own thread (its CPU is not the session's); it closes
    (and removes its certificate dir) when the event is set."""
    ready: queue.Queue[Emulator] = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        async with voice_emulator() as emu:
            ready.put(emu)
            while not stop.is_set():
                await asyncio.sleep(0.1)

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    return ready.get(timeout=30), stop, thread


async def measure(emu: Emulator, rounds: int) -> list[float]:
    session = await new_session(emu)
    session.precise = True
    await session.connect()
    figures = []
    try:
        for _ in range(rounds):
            cpu, wall = time.thread_time(), time.monotonic()
            for _ in range(2):
                await session.play(open_source(str(SAMPLE), 1.0))
            figures.append(1000 * (time.thread_time() - cpu) / (time.monotonic() - wall))
    finally:
        await session.leave()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of two plays each")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    emu, stop, thread = start_emulator()
    try:
        figures = asyncio.run(measure(emu, args.rounds))
    finally:
        stop.set()
        thread.join(30)
    print("voice session loop CPU, ms per second of audio (passthrough):")
    print("  " + "  ".join(f"{f:.2f}" for f in figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
