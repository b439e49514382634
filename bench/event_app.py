"""The application process of bench/event_path.py: an ``ipc.Client`` whose typed
``MessageCreate`` handler reads each message's content and author id (with ``--kind guild``, a
``GuildCreate`` handler reading the guild's id and its member list's length, counting only
after a first MESSAGE_CREATE, for which it prints ``armed``: the login's GUILD_CREATEs may
still be arriving when it subscribes); it prints ``ready`` once subscribed, then one
``result`` line each time ``--count`` events have been handled (or fewer, after 3 s without
one: the rest were lost on the way).

    python bench/event_app.py EVENTS COMMANDS --count N [--kind message|guild]
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
from ipc.events import GuildCreate, MessageCreate


async def main(events: str, commands: str, count: int, kind: str) -> None:
    client = Client(events, commands)
    state = {"n": 0, "first": 0.0, "last": 0.0, "chars": 0, "armed": kind == "message"}

    def report() -> None:
        seconds = state["last"] - state["first"]
        print("result " + json.dumps({"count": state["n"], "seconds": seconds}), flush=True)
        state["n"] = 0

    def handled() -> None:
        now = time.perf_counter()
        if not state["n"]:
            state["first"] = now
        state["last"] = now
        state["n"] += 1
        if state["n"] == count:
            report()

    @client.on(MessageCreate)
    def message(event: MessageCreate) -> None:
        state["chars"] += len(event.content) + (event.author.id & 1)
        if kind == "guild":
            state["armed"] = True
            print("armed", flush=True)
        else:
            handled()

    @client.on(GuildCreate)
    def guild(event: GuildCreate) -> None:
        state["chars"] += len(event.members) + (event.id & 1)
        if state["armed"]:
            handled()

    async def short() -> None:
        """Events lost on the way (a drop policy): report what came, after 3 s of quiet."""
        while True:
            await asyncio.sleep(0.5)
            if state["n"] and time.perf_counter() - state["last"] > 3.0:
                report()

    client.connect(
        [b"GUILD_CREATE ", b"MESSAGE_CREATE "] if kind == "guild" else [b"MESSAGE_CREATE "]
    )
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
    parser.add_argument("--kind", choices=["message", "guild"], default="message")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.commands, args.count, args.kind))
