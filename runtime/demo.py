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
import math
import struct
import tempfile
from pathlib import Path

from emulator.server import Emulator, EmulatorConfig
from ipc.client import Client, CommandError
from ipc.codec import topic_prefix
from ipc.errors import ErrorEvent
from ipc.events import MessageCreate
from ipc.requests import JoinVoice, PlayAudio
from ipc.states import ShardState
from runtime.config import parse_config
from runtime.plan import plan_fleet
from runtime.statusview import format_status
from runtime.supervisor import Supervisor

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.opus"

__all__ = ["run_demo"]


async def _voice(app: Client, emu: Emulator, supervisor: Supervisor, runtime_dir: Path) -> None:
    """Once the fleet is up: join a voice channel and play the bundled chime, every 20 s."""
    while not supervisor.workers or not all(
        w.state is ShardState.READY for w in supervisor.workers.values()
    ):
        await asyncio.sleep(0.5)
    guild = emu.world.guild_ids[0]
    channel = emu.world.voice_channel_id(guild)
    sample = SAMPLE if SAMPLE.is_file() else runtime_dir / "tone.pcm"
    if not SAMPLE.is_file():  # an installed package without examples/: a plain tone
        sample.write_bytes(_tone(seconds=2.0))
    try:
        reply = await app.send(JoinVoice(guild_id=guild, channel_id=channel))
        print(f"demo: voice join in guild {guild}: {reply}", flush=True)
    except CommandError as exc:
        print(f"demo: voice join in guild {guild} refused: {exc}", flush=True)
        return
    while True:
        await asyncio.sleep(3.0)
        try:
            reply = await app.send(PlayAudio(guild_id=guild, path=str(sample)))
            print(f"demo: voice play: {reply}", flush=True)
        except CommandError as exc:
            print(f"demo: voice play refused: {exc}", flush=True)
        await asyncio.sleep(17.0)


def _tone(seconds: float) -> bytes:
    """A 440 Hz tone as raw s16le 48 kHz stereo PCM."""
    samples = (
        int(6000 * math.sin(2 * math.pi * 440 * i / 48_000)) for i in range(int(48_000 * seconds))
    )
    return b"".join(struct.pack("<hh", v, v) for v in samples)


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
                "discord": {
                    "rest_url": emu.rest_url,
                    "ca_file": emu.voice.ca_file if emu.voice else "",
                },
                "shards": {
                    "intents": ["guilds", "guild_messages", "message_content", "guild_voice_states"]
                },
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

        app.connect([topic_prefix(MessageCreate) + b" ", topic_prefix(ErrorEvent)])
        app_task = asyncio.create_task(app.run())
        voice_task = asyncio.create_task(_voice(app, emu, supervisor, runtime_dir))
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
            voice_task.cancel()
            app_task.cancel()
            app.close()
            code = await fleet
        print(f"demo: {len(seen)} messages reached the app; stopped", flush=True)
        return code
