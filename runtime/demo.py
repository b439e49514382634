"""``shardline demo``: shardline against the embedded emulator, no token needed.

Starts the emulator in this process, one shard process (``python -m shards``) publishing to
an event bus socket here, injects a message every few seconds, and prints what arrives on the
bus. Ctrl-C stops the shard (it closes resumably) and then everything else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import zmq
import zmq.asyncio

from ipc.codec import CodecError, decode_bus
from ipc.control import SessionCheckpoint
from ipc.errors import ErrorEvent
from ipc.events import GuildCreate, MessageCreate, Ready

__all__ = ["run_demo"]


async def run_demo(stop: asyncio.Event, *, guilds: int = 12, message_every: float = 2.0) -> int:
    from emulator.server import Emulator, EmulatorConfig

    runtime_dir = Path(tempfile.mkdtemp(prefix="shardline-demo-"))
    os.chmod(runtime_dir, 0o700)
    endpoint = f"ipc://{runtime_dir}/events.sock"
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.bind(endpoint)
    async with Emulator(EmulatorConfig(guilds=guilds, large_members=800, large_share=0.2)) as emu:
        print(f"demo: {emu.ready_line()}", flush=True)
        env = {**os.environ, "DISCORD_TOKEN": emu.rules.token}
        shard = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shards",
                "--shard-id",
                "0",
                "--shard-count",
                "1",
                "--gateway",
                emu.gateway_url,
                "--events",
                endpoint,
                "--intents",
                "guilds,guild_messages,guild_voice_states,message_content",
            ],
            env=env,
        )
        print(f"demo: started shard 0 as pid {shard.pid}; Ctrl-C to stop", flush=True)
        printer = asyncio.create_task(_print_bus(sub))
        injector = asyncio.create_task(_inject(emu, message_every))
        try:
            while not stop.is_set() and shard.poll() is None:
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except TimeoutError:
                    pass
        finally:
            injector.cancel()
            if shard.poll() is None:
                shard.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(shard.wait, 10)
            printer.cancel()
            sub.close(linger=0)
            ctx.term()
            print(f"demo: shard exited with status {code}; stopped", flush=True)
    return 0 if code == 0 else 1


async def _inject(emu: object, every: float) -> None:
    from emulator.server import Emulator

    assert isinstance(emu, Emulator)
    n = 0
    while True:
        await asyncio.sleep(every)
        n += 1
        gid = emu.world.guild_ids[n % len(emu.world.guild_ids)]
        await emu.message(gid, f"demo message #{n}")


async def _print_bus(sub: zmq.asyncio.Socket) -> None:
    while True:
        frames = await sub.recv_multipart()
        try:
            envelope, event = decode_bus(list(frames))
        except CodecError as exc:
            print(f"bus: undecodable message: {exc}", flush=True)
            continue
        where = f"{envelope.source} seq={envelope.seq}"
        if isinstance(event, Ready):
            print(f"bus: {where} READY as {event.user.username}, {len(event.guilds)} guilds")
        elif isinstance(event, GuildCreate):
            print(f"bus: {where} GUILD_CREATE {event.name!r} ({event.member_count} members)")
        elif isinstance(event, MessageCreate):
            print(
                f"bus: {where} MESSAGE_CREATE #{event.channel_id} {event.author.username}: "
                f"{event.content}"
            )
        elif isinstance(event, SessionCheckpoint):
            continue
        elif isinstance(event, ErrorEvent):
            print(f"bus: {envelope.source} error: {event.message}")
        else:
            print(f"bus: {where} {event.type_name}")
        sys.stdout.flush()
