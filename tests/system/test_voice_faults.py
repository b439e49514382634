"""Voice through the supervisor against a voice server that misbehaves on purpose: every
session ends connected or failed with its first cause, status and the bus say the same, and
a retry happens only where the close-code table says it can help."""

from __future__ import annotations

import asyncio
import itertools
import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from emulator import Emulator
from ipc.client import Client
from ipc.voice import VoiceFailure
from runtime.supervisor import Supervisor
from runtime.voicepolicy import MAX_REJOINS
from tests.shards.helpers import eventually
from tests.system.test_supervisor import all_ready, app, emulator, fleet_with, voice_config

pytestmark = pytest.mark.slow


def voice_of(sup: Supervisor) -> dict[str, Any]:
    sessions = sup.status().to_json()["voice"]
    return dict(sessions[0]) if sessions else {}


def tone(path: Path, frames: int = 10) -> Path:
    path.write_bytes(
        b"".join(
            struct.pack("<hh", v, v)
            for v in (int(5000 * math.sin(i / 20)) for i in range(960 * frames))
        )
    )
    return path


async def join(client: Client, guild: int, channel: int) -> dict[str, Any]:
    return await client.request(
        "shardline.voice.join", {"guild_id": str(guild), "channel_id": str(channel)}
    )


def failures(client: Client) -> list[VoiceFailure]:
    seen: list[VoiceFailure] = []
    client.on(VoiceFailure)(seen.append)
    return seen


@asynccontextmanager
async def voice_fleet(
    tmp_path: Path, faults: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Emulator, Supervisor, Client]]:
    """One shard with voice on the emulator (its voice server misbehaving as ``faults``
    says), a supervisor, an app client; yields once every shard is ready."""
    async with emulator(shards=1, max_concurrency=1) as emu:
        assert emu.voice is not None
        emu.voice.faults = faults or {}
        config = voice_config(emu, tmp_path, ["guilds", "guild_voice_states"])
        async with fleet_with(config, emu, tmp_path) as sup, app(sup) as client:
            await eventually(lambda: all_ready(sup), timeout=30)
            yield emu, sup, client


async def test_a_join_after_a_shard_restart_connects_and_plays(tmp_path: Path) -> None:
    async with voice_fleet(tmp_path) as (emu, sup, client):
        assert emu.voice is not None
        await asyncio.wait_for(sup.restart_shard(0), 30)  # the new process RESUMEs
        await eventually(lambda: all_ready(sup), timeout=30)
        assert len(emu.gateway.identifies) == 1
        guild = emu.world.guild_ids[0]
        assert (await join(client, guild, emu.world.voice_channel_id(guild)))["ok"]
        await eventually(lambda: voice_of(sup).get("state") == "connected", timeout=30)
        reply = await client.request(
            "shardline.voice.play",
            {"guild_id": str(guild), "path": str(tone(tmp_path / "t.pcm"))},
        )
        assert reply["ok"], reply
        await emu.voice.wait_until(
            lambda: any(len(r.packets) >= 15 for r in emu.voice.sessions.values())  # type: ignore[union-attr]
        )


async def test_a_join_discord_never_answers_fails_with_the_reason(tmp_path: Path) -> None:
    async with voice_fleet(tmp_path) as (emu, sup, client):
        assert emu.voice is not None
        stranger = max(emu.world.guild_ids) + (1 << 22)  # the bot is not in it
        assert (await join(client, stranger, 1234))["ok"]  # op 4 went out
        voice = sup.voice[stranger]
        assert voice.join_deadline is not None
        voice.join_deadline -= 1000  # the bound has passed: no waiting 20 s in a test
        await eventually(lambda: voice_of(sup).get("state") == "failed", timeout=10)
        error = voice_of(sup)["error"]
        assert "no voice state and server" in error and str(stranger) in error
        reply = await client.request(
            "shardline.voice.play", {"guild_id": str(stranger), "path": "/x"}
        )
        assert "failed: Discord sent no voice state" in reply["error"]


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ({"close_on_identify": [4016]}, "4016"),
        ({"close_on_identify": [4021]}, "4021"),
        ({"description": {"secret_key": list(range(16))}}, "secret_key"),
        ({"description": {"secret_key": 32}}, "secret_key"),
        ({"description": {"mode": "xsalsa20_poly1305"}}, "mode"),
        ({"ready": {"ip": "no.such.host.invalid"}}, "ip"),
        ({"ready": {"port": 70000}}, "port"),
        ({"ready": {"modes": ["xsalsa20_poly1305"]}}, "no common encryption mode"),
    ],
)
async def test_a_fault_no_retry_can_fix_fails_once_with_its_first_cause(
    tmp_path: Path, fault: dict[str, Any], cause: str
) -> None:
    async with voice_fleet(tmp_path, fault) as (emu, sup, client):
        seen = failures(client)
        assert emu.voice is not None
        guild = emu.world.guild_ids[0]
        assert (await join(client, guild, emu.world.voice_channel_id(guild)))["ok"]
        await eventually(lambda: voice_of(sup).get("state") == "failed", timeout=30)
        status = voice_of(sup)
        assert cause in status["error"] and "connection lost" not in status["error"]
        await eventually(lambda: any(cause in f.message for f in seen), timeout=10)
        assert status["rejoins"] == 0  # a retry cannot fix it: none was made
        assert not any(r.secret_key == bytes(32) for r in emu.voice.sessions.values())


async def test_a_fault_that_persists_is_rejoined_a_bounded_number_of_times(
    tmp_path: Path,
) -> None:
    async with voice_fleet(tmp_path, {"hello": {"heartbeat_interval": "nan"}}) as (
        emu,
        sup,
        client,
    ):
        assert emu.voice is not None
        guild = emu.world.guild_ids[0]
        assert (await join(client, guild, emu.world.voice_channel_id(guild)))["ok"]
        voice = sup.voice[guild]
        while voice.state != "failed":
            # Each rejoin's delay is checked elsewhere; here they are made due at once.
            await eventually(lambda: voice.rejoin_at is not None or bool(voice.error), 30)
            if voice.rejoin_at is not None:
                voice.rejoin_at = 0.0
                await eventually(lambda: voice.rejoin_at is None, 10)
        assert voice.rejoins == MAX_REJOINS
        assert "heartbeat_interval" in voice.error and "rejoins in a row" in voice.error
        # the join, each rejoin, and the leave that ends it (sent when it failed)
        await emu.wait_until(lambda: len(emu.received(0, op=4)) == MAX_REJOINS + 2)
        assert emu.received(0, op=4)[-1].d["channel_id"] is None


async def test_a_session_the_server_invalidates_is_rejoined_with_growing_delays(
    tmp_path: Path,
) -> None:
    async with voice_fleet(tmp_path, {"close_on_identify": [4006, 4006]}) as (emu, sup, client):
        assert emu.voice is not None
        guild = emu.world.guild_ids[0]
        assert (await join(client, guild, emu.world.voice_channel_id(guild)))["ok"]
        await eventually(lambda: voice_of(sup).get("state") == "connected", timeout=30)
        assert voice_of(sup)["rejoins"] == 2
        joins = [r.at for r in emu.received(0, op=4)]
        assert len(joins) == 3
        gaps = [b - a for a, b in itertools.pairwise(joins)]
        assert gaps[0] >= 0.5 and gaps[1] >= 1.0  # half to all of 1 s, then of 2 s


async def test_4014_after_connect_waits_for_a_new_server_then_fails(tmp_path: Path) -> None:
    async with voice_fleet(tmp_path) as (emu, sup, client):
        assert emu.voice is not None
        guild = emu.world.guild_ids[0]
        assert (await join(client, guild, emu.world.voice_channel_id(guild)))["ok"]
        await eventually(lambda: voice_of(sup).get("state") == "connected", timeout=30)
        await emu.voice.close_session(4014, "kicked")
        await eventually(lambda: voice_of(sup).get("state") == "waiting for server", 30)
        voice = sup.voice[guild]
        assert voice.server_deadline is not None and voice.rejoins == 0
        voice.server_deadline -= 1000  # no new VOICE_SERVER_UPDATE came in time
        await eventually(lambda: voice_of(sup).get("state") == "failed", timeout=10)
        assert "4014" in voice_of(sup)["error"]
