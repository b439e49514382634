"""The application process of bench/event_path.py: an ``ipc.Client`` whose typed
``MessageCreate`` handler reads each message's content and author id; it prints ``ready`` once
subscribed, then one ``result`` line each time ``--count`` messages have been handled (or
fewer, after 3 s without one: the rest were lost on the way).

    python bench/event_app.py EVENTS COMMANDS --count N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipc.client import Client
from ipc.events import MessageCreate


async def main(events: str, commands: str, count: int) -> None:
    client = Client(events, commands)
    state = {"n": 0, "first": 0.0, "last": 0.0, "chars": 0}

    def report() -> None:
        seconds = state["last"] - state["first"]
        print("result " + json.dumps({"count": state["n"], "seconds": seconds}), flush=True)
        state["n"] = 0

    @client.on(MessageCreate)
    def handled(event: MessageCreate) -> None:
        now = time.perf_counter()
        if not state["n"]:
            state["first"] = now
        state["last"] = now
        state["chars"] += len(event.content) + (event.author.id & 1)
        state["n"] += 1
        if state["n"] == count:
            report()

    async def short() -> None:
        """Events lost on the way (a drop policy): report what came, after 3 s of quiet."""
        while True:
            await asyncio.sleep(0.5)
            if state["n"] and time.perf_counter() - state["last"] > 3.0:
                report()

    client.connect([b"MESSAGE_CREATE "])
    reader = asyncio.create_task(client.run())
    watchdog = asyncio.create_task(short())
    while not client.connected:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await reader
    watchdog.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("events")
    parser.add_argument("commands")
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.commands, args.count))
