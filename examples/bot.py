"""A small bot on shardline's application API (run by the supervisor from ``[[apps]]``).

    [[apps]]
    module = "examples.bot"
    processes = 2

It answers ``!ping`` by setting the bot's presence through the shard that owns the guild,
``!members`` by asking the gateway for the guild's members, ``!play CHANNEL`` by joining that
voice channel and playing a short clip, ``!leave`` by leaving it, and logs every error event
(the catch-all handler).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import struct
import tempfile

from ipc.client import Client, CommandError
from ipc.commands import RequestGuildMembers, UpdatePresence
from ipc.errors import ErrorEvent
from ipc.events import GuildMembersChunk, MessageCreate
from ipc.requests import GetStatus, StatusReply
from ipc.states import VoiceState
from ipc.status import FleetStatus

log = logging.getLogger("examples.bot")


async def main(client: Client) -> None:
    @client.on(MessageCreate)
    async def on_message(message: MessageCreate) -> None:
        if message.author.bot or message.guild_id is None:
            return
        try:
            if message.content == "!ping":
                activity = {"name": f"pong for {message.author.username}", "type": 0}
                reply = await client.send(
                    UpdatePresence("online", [activity]), guild_id=message.guild_id
                )
                log.info(f"ping from {message.author.username}: presence {reply.raw['routed']}")
            elif message.content.startswith("!play "):
                channel = int(message.content.split()[1])
                await client.join_voice(message.guild_id, channel)
                await _when_voice_connected(client, message.guild_id)
                await client.play(message.guild_id, _clip())
                log.info(f"playing a clip in guild {message.guild_id}")
            elif message.content == "!leave":
                await client.leave_voice(message.guild_id)
            elif message.content == "!members":
                request = RequestGuildMembers(
                    guild_id=message.guild_id, query="", limit=0, nonce=str(message.id)
                )
                await client.send(request)
        except CommandError as exc:
            log.warning(f"command refused: {exc}")

    @client.on(GuildMembersChunk)
    def on_chunk(chunk: GuildMembersChunk) -> None:
        log.info(
            f"guild {chunk.guild_id}: chunk {chunk.chunk_index + 1}/{chunk.chunk_count}, "
            f"{len(chunk.members)} members"
        )

    @client.on(ErrorEvent)
    def on_error(error: ErrorEvent) -> None:
        log.warning(f"{error.source}: {error.message}")

    await client.wait_closed()


async def _when_voice_connected(client: Client, guild_id: int, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.25)):
        reply = await client.ask(GetStatus(), StatusReply)
        status = FleetStatus.from_json(reply.status)
        if any(v.guild == str(guild_id) and v.state is VoiceState.CONNECTED for v in status.voice):
            return
        await asyncio.sleep(0.25)
    raise CommandError(f"voice in guild {guild_id} did not connect within {timeout}s")


def _clip(seconds: float = 1.0) -> str:
    """The bundled chime (Ogg Opus, played without re-encoding); else a short two-tone
    chime as raw s16le 48 kHz stereo PCM, written once."""
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample.opus")
    if os.path.exists(bundled):
        return bundled
    path = os.path.join(tempfile.gettempdir(), "shardline-example-clip.pcm")
    if not os.path.exists(path):
        n = int(48_000 * seconds)
        samples = (
            int(5000 * math.sin(2 * math.pi * (660 if i < n // 2 else 880) * i / 48_000))
            for i in range(n)
        )
        with open(path, "wb") as f:
            f.write(b"".join(struct.pack("<hh", v, v) for v in samples))
    return path
