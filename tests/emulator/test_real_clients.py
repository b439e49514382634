"""Two independent Discord libraries accept the emulator: the yardstick of its fidelity.

discord.py and hikari come from the ``[bench]`` extra. Each logs in over REST, connects to the
gateway with zlib-stream, receives READY and every GUILD_CREATE (chunking large guilds where
the library asks), then injected MESSAGE_CREATEs as its own typed objects, and logs no error.
"""

from __future__ import annotations

import asyncio
import io
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
    import discord  # the [bench] extra, which `make test` installs: missing is a failure
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
    import hikari  # the [bench] extra, which `make test` installs: missing is a failure

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


async def test_discord_py_voice_client_joins_plays_and_the_emulator_decrypts_it() -> None:
    """discord.py's own VoiceClient (DAVE through davey, as it ships) against the emulator's
    voice server: it is welcomed into the call's MLS group by an emulated member, plays PCM,
    and every frame arrives transport-decryptable and end-to-end decryptable."""
    import ssl

    import aiohttp
    import discord  # the [bench] extra, which `make test` installs: missing is a failure
    import yarl
    from discord.gateway import DiscordWebSocket

    from voiceworker.audio import SILENCE

    async with Emulator(emulator_config()) as emu:
        assert emu.voice is not None
        guild_id = emu.world.guild_ids[0]
        channel_id = emu.world.voice_channel_id(guild_id)
        member = await emu.voice.add_member(channel_id, 4242)
        old_base, old_gateway = discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = emu.rest_url
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emu.gateway_url)
        # The library's general way to trust a CA: its HTTP connector (wss goes through it).
        trust = ssl.create_default_context(cafile=emu.voice.ca_file)
        client = discord.Client(
            intents=discord.Intents.default(), connector=aiohttp.TCPConnector(ssl=trust)
        )
        ready = asyncio.Event()

        @client.event
        async def on_ready() -> None:
            ready.set()

        pcm = bytes(3840) * 2 + b"".join(  # a ramp, so frames differ
            bytes((i % 251, 0)) * 1920 for i in range(25)
        )
        with captured_logs("discord") as logs:
            task = asyncio.create_task(client.start(DEFAULT_TOKEN))
            try:
                await asyncio.wait_for(ready.wait(), 30)
                channel = client.get_channel(channel_id)
                voice = await channel.connect(timeout=15, self_deaf=True)  # type: ignore[union-attr]
                async with asyncio.timeout(15):
                    while not (voice._connection.can_encrypt and member.ready):
                        await asyncio.sleep(0.01)
                finished = asyncio.Event()
                loop = asyncio.get_running_loop()
                voice.play(
                    discord.PCMAudio(io.BytesIO(pcm)),
                    after=lambda _: loop.call_soon_threadsafe(finished.set),
                )
                await asyncio.wait_for(finished.wait(), 15)
                record = next(r for r in emu.voice.sessions.values() if r.guild_id == str(guild_id))
                await emu.voice.wait_until(lambda: len(record.packets) >= 27 + 5)
                await voice.disconnect()
            finally:
                await client.close()
                await task
                discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway
        audio = [p for p in record.packets if p.opus != SILENCE]
        assert len(audio) == 27 and all(p.e2ee for p in audio)  # DAVE on every audio frame
        assert record.undecryptable == 0 and record.e2ee_undecryptable == 0
        seqs = [p.seq for p in record.packets]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert all(not p.opus.endswith(b"\xfa\xfa") for p in audio)  # opened end to end
        # SPEAKING: the microphone goes on once, for the one clip, and off again after it.
        # (discord.py sends it from its player thread beside the audio, so its arrival is not
        # ordered against the first UDP packet; only the sequence of SPEAKING ops is.)
        assert record.speaking.count(1) == 1
        assert 0 in record.speaking[record.speaking.index(1) + 1 :]
        assert problems(logs) == []
