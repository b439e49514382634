"""An application for bench/soak.py: subscribes to everything, counts what it gets and the
gaps it sees, and (when asked) blocks its own loop for a while, as a slow bot would.

    python bench/soak_app.py EVENTS COMMANDS NAME [--block-every S --block-for S]

Prints one JSON line every 5 s: name, received, gaps, messages, rss_mb.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipc.client import Client
from ipc.events import MessageCreate


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("events")
    p.add_argument("commands")
    p.add_argument("name")
    p.add_argument("--block-every", type=float, default=0.0)
    p.add_argument("--block-for", type=float, default=0.0)
    args = p.parse_args()
    client = Client(args.events, args.commands, dedupe=True)
    client.name = args.name
    messages = 0
    next_block = time.monotonic() + args.block_every if args.block_every else None

    @client.on(MessageCreate)
    def on_message(event: MessageCreate) -> None:
        nonlocal messages, next_block
        messages += 1
        if next_block is not None and time.monotonic() >= next_block:
            time.sleep(args.block_for)  # a slow application: its loop stands still
            next_block = time.monotonic() + args.block_every

    client.connect()
    runner = asyncio.create_task(client.run())
    try:
        while True:
            await asyncio.sleep(5.0)
            line = {
                "name": args.name,
                "received": client.received,
                "gaps": client.gaps,
                "messages": messages,
                "rss_mb": round(rss_mb(), 1),
            }
            print(json.dumps(line), flush=True)
    finally:
        runner.cancel()
        client.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    os._exit(0)
