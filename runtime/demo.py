"""``shardline demo``: the supervisor and its shards against the embedded emulator.

No token needed: the emulator (in this process) plays Discord. The supervisor starts one
process per shard, grants identifies bucket by bucket, and this demo injects a message every
few seconds, follows them through the event bus with an ``ipc.Client``, runs the example bot
(``examples/bot.py``, two processes splitting the guilds), and prints the status table.
Ctrl-C stops the fleet cleanly (shards close resumably) and exits.

The demo is drivable from another terminal: it runs in the runtime dir the CLI finds with
its default config, so ``shardline status``, ``restart``, ``voice ...`` work with no flags
(when that dir is taken by a real fleet, it uses a private one and prints the ``--config`` to
add), and serves metrics on 127.0.0.1:9464. Whatever it created is removed when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import socket
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from emulator.server import Emulator, EmulatorConfig
from ipc.client import Client, CommandError
from ipc.codec import topic_prefix
from ipc.errors import ErrorEvent
from ipc.events import MessageCreate
from ipc.requests import JoinVoice, PlayAudio
from ipc.states import ShardState
from runtime.config import Config, ConfigError, load_config, parse_config
from runtime.plan import plan_fleet
from runtime.rundir import PID_FILE
from runtime.statusview import format_status
from runtime.supervisor import Supervisor

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.opus"
DEFAULT_CONFIG = "config/shardline.toml"  # what the CLI reads when given no --config
METRICS = ("127.0.0.1", 9464)


@dataclass
class DemoPlace:
    """Where the demo's supervisor runs, what a second terminal must add to reach it, and
    what to remove at the end."""

    runtime_dir: Path
    config_flag: str = ""  # "" when the CLI's defaults find it
    created_dir: bool = False
    existing: set[str] = field(default_factory=set)  # entries there before the demo

    def clean(self) -> None:
        """Remove what the demo made: the whole dir if it made it, else its new entries."""
        if self.created_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            return
        for entry in self.runtime_dir.iterdir():
            if entry.name in self.existing:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


def demo_place(default_config: str = DEFAULT_CONFIG) -> DemoPlace:
    """The runtime dir ``shardline status`` finds with no flags, when no supervisor runs
    there and no fleet's sessions are kept there; else a private dir with a config file
    naming it (printed for the second terminal)."""
    try:
        config = load_config(default_config) if Path(default_config).is_file() else Config()
    except ConfigError:
        config = None  # the second terminal's CLI would fail too: use a private dir
    if config is not None and not config.ipc.events and not config.ipc.commands:
        default_dir = config.ipc.resolved_runtime_dir()
        taken = any((default_dir / name).exists() for name in (PID_FILE, "sessions.json"))
        if not taken:
            created = not default_dir.exists()
            existing = set() if created else {e.name for e in default_dir.iterdir()}
            return DemoPlace(default_dir, created_dir=created, existing=existing)
    private = Path(tempfile.mkdtemp(prefix="shardline-demo-"))
    demo_config = private / "demo.toml"
    demo_config.write_text(f'[ipc]\nruntime_dir = "{private}"\n')
    return DemoPlace(private, config_flag=f" --config {demo_config}", created_dir=True)


def metrics_listen() -> str:
    """127.0.0.1:9464 when it is free (the address the README shows), else any free port."""
    with socket.socket() as probe:
        try:
            probe.bind(METRICS)
        except OSError:
            return f"{METRICS[0]}:0"
    return f"{METRICS[0]}:{METRICS[1]}"


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


def _print_how_to_drive(supervisor: Supervisor, place: DemoPlace, guild: int) -> None:
    """The commands a second terminal can use on this demo, with the real guild and port."""
    cli = f".venv/bin/shardline{{}}{place.config_flag}"
    address = supervisor.metrics.address if supervisor.metrics else None
    lines = [
        "demo: drive it from another terminal (in this directory):",
        "  " + cli.format(" status"),
        "  " + cli.format(" restart shard 1") + "          # it resumes",
        "  " + cli.format(f" voice play {guild} examples/sample.opus"),
    ]
    if address is not None:
        lines.append(f"  curl http://127.0.0.1:{address[1]}/metrics     # and /readyz, /healthz")
    print("\n".join(lines), flush=True)


def _tone(seconds: float) -> bytes:
    """A 440 Hz tone as raw s16le 48 kHz stereo PCM."""
    samples = (
        int(6000 * math.sin(2 * math.pi * 440 * i / 48_000)) for i in range(int(48_000 * seconds))
    )
    return b"".join(struct.pack("<hh", v, v) for v in samples)


async def run_demo(
    stop: asyncio.Event, *, guilds: int = 40, shards: int = 4, message_every: float = 2.0
) -> int:
    place = demo_place()
    try:
        return await _run(stop, place, guilds, shards, message_every)
    finally:
        place.clean()


async def _run(
    stop: asyncio.Event, place: DemoPlace, guilds: int, shards: int, message_every: float
) -> int:
    runtime_dir = place.runtime_dir
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
                "metrics": {"listen": metrics_listen()},
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
        asyncio.get_running_loop().call_later(
            3.0, _print_how_to_drive, supervisor, place, emu.world.guild_ids[0]
        )
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
