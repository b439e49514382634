"""Resharding and deploying a fleet of two hosts through a real redis-server
(docs/resharding.md): the new generation spread over both hosts, every host's applications
switched with each guild's events once, the old generation closed everywhere; a deploy asked
of one host replaces every host's application processes."""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from emulator import Emulator
from ipc.client import Client, CommandError
from ipc.requests import Deploy, Deploying, Reshard, ReshardPlan
from runtime.supervisor import Supervisor
from tests.redisserver import RedisServer
from tests.shards.helpers import eventually
from tests.system.test_cluster import host_config, hosts, ready_everywhere, redis_server
from tests.system.test_deploy_apps import APP, every_message_handled, handled
from tests.system.test_reshard import chatter, watching
from tests.system.test_supervisor import emulator, fleet_with

pytestmark = pytest.mark.slow

__all__ = ["redis_server"]  # the fixture, used by name


def resharded(running: dict[str, Supervisor], count: int) -> bool:
    """Every host runs generation ``count`` and no other, the reshard over."""
    return all(
        sup.plan.shard_count == count
        and sup.reshard_status is not None
        and sup.reshard_status.state == "done"
        and len(sup.generations) == 1
        for sup in running.values()
    )


def old_sessions_open(emu: Emulator, count: int) -> int:
    return len([s for s in emu.sessions() if s.shard_count == count and s.connection])


async def test_two_hosts_reshard_8_to_16_and_an_app_misses_and_repeats_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        emulator(shards=8, max_concurrency=8) as emu,
        hosts(emu, redis_server, tmp_path, ["a", "b"]) as running,
    ):
        await eventually(lambda: ready_everywhere(running, 8), timeout=60)
        async with watching(emu, running["a"]) as counter:
            dry = await counter.client.send(Reshard(count=16, dry_run=True))
            assert isinstance(dry, ReshardPlan) and not dry.raw["started"]
            identified = len(emu.gateway.identifies)
            plan = await counter.client.send(Reshard(count=16))
            assert isinstance(plan, ReshardPlan) and plan.raw["started"]
            with pytest.raises(CommandError, match="under way"):
                await counter.client.send(Reshard(count=24))
            await eventually(lambda: resharded(running, 16), timeout=90)
            assert ready_everywhere(running, 16)
            held = {name: sorted(sup.workers) for name, sup in running.items()}
            assert all(held.values()), f"the new shards are spread over both hosts: {held}"
            await eventually(lambda: len(counter.resharded) == 1, timeout=10)
            assert counter.resharded[0].raw == {"old_count": 8, "new_count": 16}
            await counter.hears_every_guild(emu.world.guild_ids)  # from the new generation
        assert counter.gaps_and_duplicates() == (0, 0)
        new_identifies = emu.gateway.identifies[identified:]
        assert len(new_identifies) == 16 and {r.shard_count for r in new_identifies} == {16}
        assert all(r.outcome == "ready" for r in new_identifies)  # no 4011, no 4010
        assert old_sessions_open(emu, 8) == 0  # generation 8 closed on both hosts


async def test_a_fleet_reshard_aborted_half_way_leaves_both_hosts_shards_running(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # one bucket: the 16 new shards identify one after another, so an abort lands half-way
    async with (
        emulator(shards=8, max_concurrency=1) as emu,
        hosts(emu, redis_server, tmp_path, ["a", "b"]) as running,
    ):
        await eventually(lambda: ready_everywhere(running, 8), timeout=60)
        async with watching(emu, running["a"]) as counter:
            before = {
                name: {s: w.proc.pid for s, w in sup.workers.items() if w.proc}
                for name, sup in running.items()
            }
            await counter.client.send(Reshard(count=16))
            await eventually(lambda: 2 <= len([s for s in emu.sessions() if s.shard_count == 16]))
            reply = await counter.client.send(Reshard(abort=True))
            assert isinstance(reply, ReshardPlan) and not reply.raw["started"]
            await eventually(
                lambda: all(
                    sup.reshard_status is not None
                    and sup.reshard_status.state == "aborted"
                    and len(sup.generations) == 1
                    for sup in running.values()
                ),
                timeout=30,
            )
            assert {s.reshard_status.problem for s in running.values() if s.reshard_status} == {
                "aborted on request"
            }
            after = {
                name: {s: w.proc.pid for s, w in sup.workers.items() if w.proc}
                for name, sup in running.items()
            }
            assert after == before  # the 8 shards' processes untouched
            assert all(sup.plan.shard_count == 8 for sup in running.values())
            assert ready_everywhere(running, 8) and counter.resharded == []
            await counter.hears_every_guild(emu.world.guild_ids)
        assert counter.gaps_and_duplicates() == (0, 0)
        assert old_sessions_open(emu, 16) == 0


async def test_a_4011_with_auto_reshard_grows_the_fleet_on_both_hosts_with_nothing_lost(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        emulator(shards=4, max_concurrency=2, max_guilds_per_shard=9) as emu,
        hosts(emu, redis_server, tmp_path, ["a", "b"], auto_reshard=True) as running,
    ):
        await eventually(lambda: ready_everywhere(running, 4), timeout=60)
        async with watching(emu, running["b"]) as counter:
            await emu.join_guilds(12)  # 36 guilds: some shard holds more than 9
            await eventually(lambda: resharded(running, 8), timeout=90)
            assert ready_everywhere(running, 8)
            await eventually(lambda: len(counter.resharded) == 1, timeout=10)
            assert counter.resharded[0].raw == {"old_count": 4, "new_count": 8}
            await counter.hears_every_guild(emu.world.guild_ids)
        assert not any(sup.fatal_message for sup in running.values())  # nobody stopped
        assert any(s.invalid for s in emu.sessions() if s.shard_count == 4)  # the 4011 came
        assert counter.gaps_and_duplicates() == (0, 0)


async def test_a_fleet_reshard_the_budget_cannot_cover_is_refused_with_the_numbers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        emulator(shards=8, max_concurrency=8, session_start_remaining=12) as emu,
        hosts(emu, redis_server, tmp_path, ["a", "b"]) as running,
    ):
        await eventually(lambda: ready_everywhere(running, 8), timeout=60)
        async with watching(emu, running["a"]) as counter:
            with pytest.raises(
                CommandError, match=r"needs 16 IDENTIFYs and Discord allows \d+ more"
            ):
                await counter.client.send(Reshard(count=16))
            with pytest.raises(CommandError, match="not a multiple of 8"):
                await counter.client.send(Reshard(count=12))
        assert all(sup.reshard_status is None for sup in running.values())
        assert len(emu.gateway.identifies) == 8


async def test_a_deploy_asked_of_one_host_replaces_every_hosts_app_processes(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`shardline deploy` on host a: the fleet's two application processes (one per host)
    are both replaced by the code on disk now while messages flow, and every message of
    every guild is handled by one of them."""
    (tmp_path / "deployapp.py").write_text(APP.format(version=1))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("DEPLOY_LOG", str(tmp_path / "handled"))
    async with (
        emulator(shards=4, max_concurrency=4) as emu,
        hosts(emu, redis_server, tmp_path, ["a", "b"], apps=2, app_module="deployapp") as running,
    ):
        await eventually(lambda: ready_everywhere(running, 4), timeout=60)

        def app_pids() -> dict[str, set[int]]:
            return {
                name: {a.proc.pid for a in sup.apps if a.proc and not a.retired}
                for name, sup in running.items()
            }

        await eventually(lambda: all(len(p) == 1 for p in app_pids().values()), timeout=60)
        first = app_pids()
        running_now = set().union(*first.values())  # (a host alone at first ran both)
        await eventually(lambda: set(handled(tmp_path)) >= running_now, timeout=30)
        stop = asyncio.Event()
        talk = asyncio.create_task(chatter(emu, stop))
        client = Client(running["a"].endpoints.events, running["a"].endpoints.commands)
        try:
            (tmp_path / "deployapp.py").write_text(APP.format(version=2))  # the new code
            reply = await client.send(Deploy())
            assert isinstance(reply, Deploying)
            assert sorted(reply.raw["apps"]) == ["deployapp[0]", "deployapp[1]"]
            await eventually(
                lambda: all(
                    len(now) == 1 and not now & first[name] for name, now in app_pids().items()
                ),
                timeout=60,
            )
            new = set().union(*app_pids().values())
            await eventually(
                lambda: all(handled(tmp_path).get(pid, (set(), {}))[0] == {2} for pid in new),
                timeout=30,
            )
            await eventually(  # status on any host shows the fleet's, each with its host
                lambda: (
                    {(a["host"], a["pid"]) for a in running["a"].status().to_json()["apps"]}
                    == {(name, pid) for name, pids in app_pids().items() for pid in pids}
                ),
                timeout=10,
            )
        finally:
            stop.set()
            await talk
            client.close()

        await eventually(lambda: every_message_handled(tmp_path, emu), timeout=30)
        assert all(a.restarts == 0 for sup in running.values() for a in sup.apps)


async def test_a_host_that_stops_during_a_reshard_leaves_its_new_shards_to_the_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Host b stops while the new generation identifies: its new shards close resumably and
    host a resumes them; the reshard ends on host a alone, nothing lost or doubled."""
    async with emulator(shards=8, max_concurrency=1) as emu:
        config_a = host_config(emu, redis_server, tmp_path, "a")
        config_b = host_config(emu, redis_server, tmp_path, "b")
        async with fleet_with(config_a, emu, tmp_path / "a") as host_a:
            running = {"a": host_a}
            async with AsyncExitStack() as stack:
                running["b"] = await stack.enter_async_context(
                    fleet_with(config_b, emu, tmp_path / "b")
                )
                await eventually(lambda: ready_everywhere(running, 8), timeout=60)
                # b's shards are taken over: what they replay is dropped by seq (dedupe)
                async with watching(emu, host_a, dedupe=True) as counter:
                    await counter.client.send(Reshard(count=16))
                    fleet_b = running["b"].fleet_resharding
                    assert fleet_b is not None
                    await eventually(
                        lambda: (
                            fleet_b.taking is not None
                            and any(
                                w.state.value == "ready"
                                for w in fleet_b.taking.fleet.workers.values()
                            )
                        ),
                        timeout=60,
                    )
                    await stack.aclose()  # host b stops, half-way
                    del running["b"]
                    await eventually(lambda: resharded(running, 16), timeout=120)
                    assert sorted(host_a.workers) == list(range(16))
                    await counter.hears_every_guild(emu.world.guild_ids)
            assert counter.gaps_and_duplicates() == (0, 0)
            assert old_sessions_open(emu, 8) == 0
