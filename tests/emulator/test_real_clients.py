"""Two independent Discord libraries accept the emulator: the yardstick of its fidelity.

discord.py and hikari come from the ``[bench]`` extra. Each logs in over REST, connects to the
gateway with zlib-stream, receives READY and every GUILD_CREATE (chunking large guilds where
the library asks), then injected MESSAGE_CREATEs as its own typed objects, and logs no error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from emulator import DEFAULT_TOKEN, Emulator, EmulatorConfig, GatewayRules, WorldConfig

pytestmark = pytest.mark.slow

GUILDS = 6


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured_logs(*names: str) -> Iterator[_Collector]:
    collector = _Collector()
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(collector)
        lg.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(collector)
            lg.setLevel(level)


def problems(collector: _Collector) -> list[str]:
    """Errors, tracebacks and parse failures a library logged."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in collector.records
        if r.levelno >= logging.ERROR
        or r.exc_info
        or "parse" in r.getMessage().lower()
        or ("unknown" in r.getMessage().lower() and "event" in r.getMessage().lower())
    ]


def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(
        rules=GatewayRules(identify_interval=0.0),
        world=WorldConfig(guilds=GUILDS, large_share=0.34, large_members=600),
    )


async def test_discord_py_accepts_the_emulator() -> None:
    discord = pytest.importorskip("discord", reason="install the [bench] extra")
    import yarl
    from discord.gateway import DiscordWebSocket

    async with Emulator(emulator_config()) as emu:
        old_base, old_gateway = discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = emu.rest_url
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emu.gateway_url)
        intents = discord.Intents.default()
        intents.message_content = True
        intents.members = True
        client = discord.Client(intents=intents)
        ready = asyncio.Event()
        messages: list[object] = []
        all_messages = asyncio.Event()

        @client.event
        async def on_ready() -> None:
            ready.set()

        @client.event
        async def on_message(message: object) -> None:
            messages.append(message)
            if len(messages) == 3:
                all_messages.set()

        with captured_logs("discord") as logs:
            task = asyncio.create_task(client.start(DEFAULT_TOKEN))
            try:
                await asyncio.wait_for(ready.wait(), 30)
                assert sorted(g.id for g in client.guilds) == sorted(emu.world.guild_ids)
                for guild in client.guilds:  # chunked: every member of large guilds too
                    assert guild.member_count == emu.world.member_count(guild.id)
                    assert len(guild.members) == guild.member_count
                    assert guild.me is not None and len(guild.text_channels) == 3
                for gid in emu.world.guild_ids[:2]:
                    await emu.message(gid, f"hello {gid}")
                await emu.message(None, "a direct message")
                await asyncio.wait_for(all_messages.wait(), 10)
            finally:
                await client.close()
                await task
                discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway
        assert all(isinstance(m, discord.Message) for m in messages)
        by_content = {m.content: m for m in messages}  # type: ignore[attr-defined]
        gid = emu.world.guild_ids[0]
        assert by_content[f"hello {gid}"].guild.id == gid
        assert isinstance(by_content[f"hello {gid}"].author, discord.Member)
        assert by_content["a direct message"].guild is None
        assert problems(logs) == []


async def test_hikari_accepts_the_emulator() -> None:
    hikari = pytest.importorskip("hikari", reason="install the [bench] extra")

    async with Emulator(emulator_config()) as emu:
        bot = hikari.GatewayBot(
            DEFAULT_TOKEN,
            rest_url=emu.rest_url,
            intents=hikari.Intents.ALL_UNPRIVILEGED | hikari.Intents.MESSAGE_CONTENT,
            banner=None,
            suppress_optimization_warning=True,
        )
        started = asyncio.Event()
        guilds: list[object] = []
        messages: list[object] = []
        all_messages = asyncio.Event()

        all_guilds = asyncio.Event()

        @bot.listen(hikari.GuildAvailableEvent)
        async def on_guild(event: hikari.GuildAvailableEvent) -> None:
            guilds.append(event)
            if len(guilds) == GUILDS:
                all_guilds.set()

        @bot.listen(hikari.MessageCreateEvent)
        async def on_message(event: hikari.MessageCreateEvent) -> None:
            messages.append(event)
            if len(messages) == 3:
                all_messages.set()

        @bot.listen(hikari.StartedEvent)
        async def on_started(event: hikari.StartedEvent) -> None:
            started.set()

        with captured_logs("hikari") as logs:
            await bot.start(check_for_updates=False)
            try:
                await asyncio.wait_for(started.wait(), 30)
                await asyncio.wait_for(all_guilds.wait(), 10)
                for gid in emu.world.guild_ids[:2]:
                    await emu.message(gid, f"hello {gid}")
                await emu.message(None, "a direct message")
                await asyncio.wait_for(all_messages.wait(), 10)
            finally:
                await bot.close()
        assert sorted(int(e.guild_id) for e in guilds) == sorted(emu.world.guild_ids)  # type: ignore[attr-defined]
        assert all(isinstance(e.guild, hikari.GatewayGuild) for e in guilds)  # type: ignore[attr-defined]
        contents = sorted(e.message.content for e in messages)  # type: ignore[attr-defined]
        assert contents == sorted(
            ["a direct message"] + [f"hello {g}" for g in emu.world.guild_ids[:2]]
        )
        dm = next(e for e in messages if e.message.content == "a direct message")  # type: ignore[attr-defined]
        assert isinstance(dm, hikari.DMMessageCreateEvent)
        assert problems(logs) == []
