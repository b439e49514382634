"""A small bot on shardline's application API (run by the supervisor from ``[[apps]]``).

    [[apps]]
    module = "examples.bot"
    processes = 2

It answers ``!ping`` by setting the bot's presence through the shard that owns the guild,
``!members`` by asking the gateway for the guild's members, and logs every error event (the
catch-all handler). Joining voice and playing a clip come with the voice worker.
"""

from __future__ import annotations

import logging

from ipc.client import Client, CommandError
from ipc.commands import RequestGuildMembers, UpdatePresence
from ipc.errors import ErrorEvent
from ipc.events import GuildMembersChunk, MessageCreate

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
                log.info(f"ping from {message.author.username}: presence {reply['routed']}")
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
