"""Resharding a running fleet (docs/resharding.md): a new generation beside the old one,
the applications switched over with every guild's events once, the old one closed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from emulator import Emulator
from ipc.client import Client, CommandError
from ipc.events import MessageCreate, Resharded
from ipc.requests import Reshard, ReshardPlan
from runtime.supervisor import Supervisor
from tests.shards.helpers import eventually
from tests.system.test_supervisor import INTERVAL, all_ready, emulator, fleet

pytestmark = pytest.mark.slow


async def chatter(
    emu: Emulator, stop: asyncio.Event, undeliverable: dict[str, set[int]] | None = None
) -> int:
    """Messages in every guild, round and round, until ``stop`` (paced, as chat is). A
    message no session holds (its shard closed, its successor not up yet) is one Discord
    itself would not deliver: its number goes in ``undeliverable``."""
    sent = 0
    while not stop.is_set():
        for guild in list(emu.world.guild_ids):
            data = emu.world.message(guild, f"m{sent}")
            if not await emu.inject("MESSAGE_CREATE", data, guild_id=guild):
                if undeliverable is not None:
                    undeliverable.setdefault(str(guild), set()).add(data["shardline_guild_seq"])
            sent += 1
        await asyncio.sleep(0.01)
    return sent


class GuildCounter:
    """An application that records each guild's message numbers (shardline_guild_seq)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.undeliverable: dict[str, set[int]] = {}  # see chatter
        self.seen: dict[str, list[int]] = {}
        self.resharded: list[Resharded] = []
        client.on(MessageCreate)(self.on_message)
        client.on(Resharded)(self.resharded.append)

    def on_message(self, event: MessageCreate) -> None:
        self.seen.setdefault(str(event.raw["guild_id"]), []).append(
            int(event.raw["shardline_guild_seq"])
        )

    def gaps_and_duplicates(self) -> tuple[int, int]:
        """Missing numbers (but those no session could carry) and repeated ones."""
        gaps = duplicates = 0
        for guild, numbers in self.seen.items():
            duplicates += len(numbers) - len(set(numbers))
            distinct = set(numbers) | self.undeliverable.get(guild, set())
            gaps += max(distinct) - min(distinct) + 1 - len(distinct)
        return gaps, duplicates

    async def hears_every_guild(self, guilds: list[int]) -> None:
        """Until each guild has a few more messages than now (the fleet serves them all)."""
        marks = {str(g): len(self.seen.get(str(g), [])) for g in guilds}
        await eventually(
            lambda: all(len(self.seen.get(g, [])) > n + 2 for g, n in marks.items()), timeout=20
        )


@asynccontextmanager
async def watching(
    emu: Emulator, sup: Supervisor, dedupe: bool = False
) -> AsyncIterator[GuildCounter]:
    """An application counting every guild's messages while chatter flows, from before
    the block (each guild heard once) to after it (``dedupe``: dropping what a session
    replays after a takeover, by seq, as an application of a fleet does)."""
    client = Client(sup.endpoints.events, sup.endpoints.commands, dedupe=dedupe)
    counter = GuildCounter(client)
    client.connect()
    reader = asyncio.create_task(client.run())
    stop = asyncio.Event()
    talk: asyncio.Task[int] | None = None
    try:
        await eventually(lambda: len(sup.wiring.subscribers()) == 1, timeout=10)
        talk = asyncio.create_task(chatter(emu, stop, counter.undeliverable))
        await eventually(lambda: len(counter.seen) == len(emu.world.guild_ids), timeout=20)
        yield counter
    finally:
        stop.set()
        if talk is not None:
            await talk
        reader.cancel()
        client.close()


async def test_resharding_8_to_16_loses_and_repeats_nothing(tmp_path: Path) -> None:
    async with emulator(shards=8, max_concurrency=8) as emu, fleet(emu, tmp_path) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        async with watching(emu, sup) as counter:
            client = counter.client
            dry = await client.send(Reshard(count=16, dry_run=True))
            assert isinstance(dry, ReshardPlan) and not dry.raw["started"]
            assert dry.raw["identifies"] == 16 and dry.raw["current"] == 8
            identified = len(emu.gateway.identifies)
            plan = await client.send(Reshard(count=16))
            assert isinstance(plan, ReshardPlan) and plan.raw["started"]
            with pytest.raises(CommandError, match="under way"):
                await client.send(Reshard(count=24))
            await eventually(
                lambda: sup.reshard_status is not None and sup.reshard_status.state == "done",
                timeout=60,
            )
            assert sup.plan.shard_count == 16 and sorted(sup.workers) == list(range(16))
            await eventually(lambda: len(counter.resharded) == 1, timeout=10)
            assert counter.resharded[0].raw == {"old_count": 8, "new_count": 16}
            await counter.hears_every_guild(emu.world.guild_ids)  # from the new generation
        assert counter.gaps_and_duplicates() == (0, 0)
        new_identifies = emu.gateway.identifies[identified:]
        assert len(new_identifies) == 16 and {r.shard_count for r in new_identifies} == {16}
        assert all(r.outcome == "ready" for r in new_identifies)  # no 4011, no 4010
        assert not [s for s in emu.sessions() if s.shard_count == 8 and s.connection]  # closed
        assert sup.status().to_json()["reshard"]["state"] == "done"


async def test_an_aborted_reshard_leaves_the_running_shards_untouched(tmp_path: Path) -> None:
    # the new shards identify one every half second: an abort lands half-way
    async with emulator(shards=8, max_concurrency=1, identify_interval=0.5) as emu:
        async with fleet(emu, tmp_path) as sup:
            sup.scheduler.interval = 0.5
            await eventually(lambda: all_ready(sup), timeout=60)
            async with watching(emu, sup) as counter:
                before = {s: w.proc.pid for s, w in sup.workers.items() if w.proc}
                await counter.client.send(Reshard(count=16))
                await eventually(
                    lambda: 2 <= len([s for s in emu.sessions() if s.shard_count == 16]), 30
                )
                reply = await counter.client.send(Reshard(abort=True))
                assert isinstance(reply, ReshardPlan) and not reply.raw["started"]
                await eventually(
                    lambda: (
                        sup.reshard_status is not None and sup.reshard_status.state == "aborted"
                    ),
                    timeout=30,
                )
                assert sup.reshard_status is not None
                assert sup.reshard_status.problem == "aborted on request"
                assert sup.plan.shard_count == 8
                assert {s: w.proc.pid for s, w in sup.workers.items() if w.proc} == before
                assert all_ready(sup) and counter.resharded == []
                await counter.hears_every_guild(emu.world.guild_ids)
            assert counter.gaps_and_duplicates() == (0, 0)
            assert not [s for s in emu.sessions() if s.shard_count == 16 and s.connection]


async def test_a_reshard_the_budget_cannot_cover_is_refused_with_the_numbers(
    tmp_path: Path,
) -> None:
    async with emulator(shards=2, max_concurrency=1, session_start_remaining=5) as emu:
        async with fleet(emu, tmp_path) as sup:
            await eventually(lambda: all_ready(sup), timeout=30)
            client = Client(sup.endpoints.events, sup.endpoints.commands)
            try:
                with pytest.raises(CommandError) as refused:
                    await client.send(Reshard(count=4))
                assert str(refused.value) == (
                    "resharding to 4 shards needs 4 IDENTIFYs and Discord allows 3 more "
                    "today: running out would reset the bot's token; not started"
                )
                with pytest.raises(CommandError, match="runs 2 shards already"):
                    await client.send(Reshard(count=2))
                assert sup.reshard_status is None and len(emu.gateway.identifies) == 2
            finally:
                client.close()


async def test_shardline_reshard_on_the_command_line(tmp_path: Path) -> None:
    """The operator's path: `shardline run`, then `shardline reshard --count 4 --dry-run`
    and `shardline reshard --count 4`, which prints progress and ends when it is done."""
    from tests.system.test_voice_cli import ROOT, cli, until

    async with emulator(shards=2, max_concurrency=2) as emu:
        path = tmp_path / "shardline.toml"
        path.write_text(
            f'[discord]\nrest_url = "{emu.rest_url}"\n[shards]\nintents = ["guilds"]\n'
            f'[ipc]\nruntime_dir = "{tmp_path / "run"}"\n[log]\nlevel = "warning"\n'
        )
        supervisor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.cli", "run", "--config", str(path),
            "--identify-interval", str(INTERVAL),
            env={**os.environ, "DISCORD_TOKEN": emu.rules.token},
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await until(path, lambda s: bool(s) and all(x["state"] == "ready" for x in s["shards"]))
            dry = await asyncio.to_thread(cli, path, "reshard", "--count", "4", "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert "2 -> 4 shards: 4 IDENTIFYs" in dry.stdout and "dry run" in dry.stdout
            done = await asyncio.to_thread(cli, path, "reshard", "--count", "4")
            assert done.returncode == 0, done.stderr
            assert "4 shards ready of 4" in done.stdout and done.stdout.rstrip().endswith("done")
            refused = await asyncio.to_thread(cli, path, "reshard", "--count", "4")
            assert refused.returncode == 1 and "runs 4 shards already" in refused.stderr
            await until(path, lambda s: len(s["shards"]) == 4 and s["shard_count"] == 4)
        finally:
            supervisor.terminate()
            await supervisor.wait()


async def test_a_4011_with_auto_reshard_ends_in_a_larger_fleet_with_nothing_lost(
    tmp_path: Path,
) -> None:
    """The bot outgrows its shards: Discord closes one with 4011. With shards.auto_reshard
    the fleet reshards to twice the count instead of stopping, and every message a session
    carried reaches the application once."""
    async with emulator(shards=4, max_concurrency=2, max_guilds_per_shard=9) as emu:
        async with fleet(emu, tmp_path, auto_reshard=True) as sup:
            await eventually(lambda: all_ready(sup), timeout=30)
            async with watching(emu, sup) as counter:
                await emu.join_guilds(12)  # 36 guilds: some shard holds more than 9
                await eventually(
                    lambda: sup.reshard_status is not None and sup.reshard_status.state == "done",
                    timeout=60,
                )
                assert sup.plan.shard_count == 8 and all_ready(sup)
                await eventually(lambda: len(counter.resharded) == 1, timeout=10)  # (the bus)
                assert counter.resharded[0].raw == {"old_count": 4, "new_count": 8}
                await counter.hears_every_guild(emu.world.guild_ids)
            assert not sup.fatal_message  # the 4011 did not stop the fleet
            assert any(s.invalid for s in emu.sessions() if s.shard_count == 4)  # it came
            assert counter.gaps_and_duplicates() == (0, 0)


async def test_auto_reshard_follows_a_risen_recommendation(tmp_path: Path) -> None:
    async with emulator(shards=2, max_concurrency=2) as emu:
        async with fleet(emu, tmp_path, auto_reshard=True, auto_reshard_interval=1.0) as sup:
            await eventually(lambda: all_ready(sup), timeout=30)
            assert emu.recommend_shards(4) == 4
            await eventually(
                lambda: sup.reshard_status is not None and sup.reshard_status.state == "done",
                timeout=60,
            )
            assert sup.plan.shard_count == 4 and all_ready(sup)
