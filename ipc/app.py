"""``python -m ipc.app --module NAME``: host a bot application module with a connected client.

The supervisor starts this for each ``[[apps]]`` entry (``processes`` times); it also runs by
hand next to a running supervisor. The module must define ``async def main(client)``. The
endpoints come from ``SHARDLINE_EVENTS`` and ``SHARDLINE_COMMANDS`` (and
``SHARDLINE_SERVER_KEY`` for tcp:// endpoints). With several processes, each gets the guilds
``(guild_id >> 22) % count == index`` (DMs go to index 0).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys

from ipc.client import Client
from ipc.logfmt import setup_logging

log = logging.getLogger("shardline.app")


async def host(module_name: str, index: int, count: int) -> int:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        log.error(f"cannot import the app module {module_name!r}: {exc}")
        return 2
    entry = getattr(module, "main", None)
    if entry is None:
        log.error(f"{module_name} has no `async def main(client)`")
        return 2
    events = os.environ.get("SHARDLINE_EVENTS")
    commands = os.environ.get("SHARDLINE_COMMANDS")
    if not events or not commands:
        log.error("SHARDLINE_EVENTS and SHARDLINE_COMMANDS must name the supervisor's endpoints")
        return 2
    client = Client(
        events,
        commands,
        server_key=os.environ.get("SHARDLINE_SERVER_KEY") or None,
        partition=(index, count),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The module's main runs first, up to its first await, so that the handlers it declares
    # there are in place before this process subscribes: from its subscription on, nothing
    # reaches it unhandled (a deploy stops the process it replaces at that moment).
    app = asyncio.create_task(entry(client))
    await asyncio.sleep(0)
    if not client.connected:
        client.connect()
    receiver = asyncio.create_task(client.run())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({receiver, app, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for task in (receiver, app, stopper):
        task.cancel()
    client.close()
    if app in done and not app.cancelled() and app.exception() is not None:
        log.error("the app crashed", exc_info=app.exception())
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ipc.app", description=__doc__)
    parser.add_argument("--module", required=True, help="module with `async def main(client)`")
    parser.add_argument("--index", type=int, default=0, help="this process's index")
    parser.add_argument("--count", type=int, default=1, help="processes sharing the guilds")
    args = parser.parse_args()
    setup_logging("app", f"{args.module}:{args.index}")
    return asyncio.run(host(args.module, args.index, args.count))


if __name__ == "__main__":
    sys.exit(main())
