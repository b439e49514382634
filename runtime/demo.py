"""``shardline demo``: the supervisor and its shards against the embedded emulator.

No token needed: the emulator (in this process) plays Discord. The supervisor starts one
process per shard, grants identifies bucket by bucket, and this demo injects a message every
few seconds, follows them through the event bus with an ``ipc.Client``, runs the example bot
(``examples/bot.py``, two processes splitting the guilds), and prints the status table.
Ctrl-C stops the fleet cleanly (shards close resumably) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

from emulator.server import Emulator, EmulatorConfig
from ipc.client import Client
from ipc.errors import ErrorEvent
from ipc.events import MessageCreate
from runtime.cli import format_status
from runtime.config import parse_config
from runtime.plan import plan_fleet
from runtime.supervisor import Supervisor

__all__ = ["run_demo"]


async def run_demo(
    stop: asyncio.Event, *, guilds: int = 40, shards: int = 4, message_every: float = 2.0
) -> int:
    runtime_dir = Path(tempfile.mkdtemp(prefix="shardline-demo-"))
    emu_config = EmulatorConfig(
        guilds=guilds,
        shards=shards,
        max_concurrency=2,
        identify_interval=1.0,
        large_share=0.1,
        large_members=800,
    )
    async with Emulator(emu_config) as emu:
        print(f"demo: {emu.ready_line()}", flush=True)
        config = parse_config(
            {
                "discord": {"rest_url": emu.rest_url},
                "shards": {"intents": ["guilds", "guild_messages", "message_content"]},
                "ipc": {"runtime_dir": str(runtime_dir)},
                "apps": [{"module": "examples.bot", "processes": 2}],
            },
            "<demo>",
        )
        token = emu.rules.token
        plan = await asyncio.to_thread(plan_fleet, config, token)
        supervisor = Supervisor(
            config,
            plan,
            token,
            runtime_dir=runtime_dir,
            identify_interval=1.0,
            progress=lambda line: print(f"supervisor: {line}", flush=True),
        )
        fleet = asyncio.create_task(supervisor.run(stop))
        app = Client(supervisor.endpoints.events, supervisor.endpoints.commands)
        seen: list[MessageCreate] = []

        @app.on(MessageCreate)
        def on_message(event: MessageCreate) -> None:
            seen.append(event)
            print(
                f"app: MESSAGE_CREATE in guild {event.guild_id} from {event.author.username}: "
                f"{event.content}",
                flush=True,
            )

        @app.on(ErrorEvent)
        def on_error(event: ErrorEvent) -> None:
            print(f"app: error from {event.source}: {event.message}", flush=True)

        app.connect([b"MESSAGE_CREATE ", b"shardline.error"])
        app_task = asyncio.create_task(app.run())
        n = 0
        try:
            while not fleet.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fleet), message_every)
                if fleet.done():
                    break
                n += 1
                gid = emu.world.guild_ids[n % len(emu.world.guild_ids)]
                # every third message asks the example bot (examples/bot.py) for a pong
                await emu.message(gid, "!ping" if n % 3 == 0 else f"demo message #{n}")
                if n % 3 == 1:
                    print(format_status(supervisor.status()), flush=True)
        finally:
            app_task.cancel()
            app.close()
            code = await fleet
        print(f"demo: {len(seen)} messages reached the app; stopped", flush=True)
        return code
