"""The supervisor with real shard processes against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from emulator import Emulator, EmulatorConfig, GatewayRules, WorldConfig, shard_for
from ipc.client import Client, CommandError
from ipc.commands import RequestGuildMembers
from ipc.messages import ErrorCode, Routed
from ipc.requests import GetStatus, StatusReply, StopFleet
from ipc.states import ShardState, VoiceState
from ipc.status import FleetStatus
from runtime.config import Config, ConfigError, parse_config
from runtime.plan import plan_fleet
from runtime.spawner import ZygoteSpawner
from runtime.supervisor import StartupError, Supervisor
from tests.shards.helpers import eventually

pytestmark = pytest.mark.slow

INTERVAL = 0.3  # identify interval per bucket the supervisor keeps, shortened for tests
# What the emulator enforces: a little less, because a permit's trip through a loaded CI
# machine (process start, two cores) varies by more than the scheduler's margin.
GATEWAY_INTERVAL = 0.2


def emulator(shards: int = 4, max_concurrency: int = 2, **rules: Any) -> Emulator:
    rules.setdefault("identify_interval", GATEWAY_INTERVAL)
    rules.setdefault("max_concurrency", max_concurrency)
    return Emulator(
        EmulatorConfig(
            shards=shards,
            rules=GatewayRules(**rules),
            world=WorldConfig(guilds=24, large_share=0.0),
        )
    )


def make_config(emu: Emulator, runtime_dir: Path, **shards: Any) -> Config:
    return parse_config(
        {
            "discord": {"rest_url": emu.rest_url},
            "shards": {"intents": ["guilds", "guild_messages"], **shards},
            "ipc": {"runtime_dir": str(runtime_dir)},
            "restart": {"backoff_initial": 0.1, "hang_timeout": 2.0},
            "log": {"level": "warning"},
        }
    )


def voice_config(emu: Emulator, runtime_dir: Path, intents: list[str], **extra: Any) -> Config:
    """A config for the emulator with voice: its certificate trusted as an extra CA."""
    assert emu.voice is not None
    return parse_config(
        {
            "discord": {"rest_url": emu.rest_url, "ca_file": emu.voice.ca_file},
            "shards": {"intents": intents},
            "ipc": {"runtime_dir": str(runtime_dir)},
            **extra,
        }
    )


@asynccontextmanager
async def fleet(emu: Emulator, runtime_dir: Path, **shards: Any) -> AsyncIterator[Supervisor]:
    async with fleet_with(make_config(emu, runtime_dir, **shards), emu, runtime_dir) as sup:
        yield sup


@asynccontextmanager
async def fleet_with(config: Config, emu: Emulator, runtime_dir: Path) -> AsyncIterator[Supervisor]:
    plan = await asyncio.to_thread(plan_fleet, config, emu.rules.token)
    supervisor = Supervisor(
        config,
        plan,
        emu.rules.token,
        runtime_dir=runtime_dir,
        identify_interval=INTERVAL,
        progress=lambda line: None,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(supervisor.run(stop))
    try:
        yield supervisor
    finally:
        stop.set()
        supervisor.exit_code = await asyncio.wait_for(task, 30)  # type: ignore[attr-defined]


def all_ready(supervisor: Supervisor) -> bool:
    return all(s["state"] == "ready" for s in supervisor.status().to_json()["shards"])


@asynccontextmanager
async def app(supervisor: Supervisor) -> AsyncIterator[Client]:
    client = Client(supervisor.endpoints.events, supervisor.endpoints.commands)
    client.connect()
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        client.close()


async def test_startup_honours_identify_buckets(tmp_path: Path) -> None:
    async with emulator(shards=6, max_concurrency=2) as emu, fleet(emu, tmp_path) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        identifies = emu.gateway.identifies
        assert [r.outcome for r in identifies] == ["ready"] * 6  # none refused by the gateway
        for bucket in (0, 1):
            rows = [r for r in identifies if r.bucket == bucket]
            assert [r.shard_id for r in rows] == sorted(r.shard_id for r in rows)  # id order
            gaps = [b.at - a.at for a, b in itertools.pairwise(rows)]
            assert all(gap >= GATEWAY_INTERVAL for gap in gaps), gaps
        status = sup.status()
        assert status.identifies_remaining == 1000 - 6
        assert {s.guilds for s in status.shards} != {0}


async def test_sigkill_under_load_respawns_and_resumes_without_loss(tmp_path: Path) -> None:
    async with emulator(shards=2) as emu, fleet(emu, tmp_path) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        session = next(s for s in emu.sessions(1) if not s.invalid)
        victim = sup.workers[1]
        assert victim.proc is not None
        stream = emu.stream(1, rate=2000, count=3000)
        await eventually(lambda: session.seq > 500)
        os.kill(victim.proc.pid, signal.SIGKILL)
        await stream
        await eventually(lambda: victim.restarts == 1 and all_ready(sup), timeout=30)
        final = session.seq
        await eventually(lambda: sup.status().to_json()["shards"][1]["seq"] >= final, timeout=30)
        assert len(emu.gateway.identifies) == 2  # the respawned shard resumed
        assert "killed by signal 9" in victim.last_exit


async def test_every_dispatch_reaches_the_application_across_a_kill(tmp_path: Path) -> None:
    async with emulator(shards=1, max_concurrency=1) as emu, fleet(emu, tmp_path) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        async with app(sup) as client:
            seen: set[int] = set()
            # The client saw no dispatch yet: record seqs from here on.
            from ipc.codec import decode_bus

            original = client._dispatch

            async def spy(frames: list[bytes]) -> None:
                envelope, _ = decode_bus(frames)
                if envelope.kind == "dispatch" and envelope.seq is not None:
                    seen.add(envelope.seq)
                await original(frames)

            client._dispatch = spy  # type: ignore[method-assign]
            await client.send(GetStatus())  # connected: the bus has us too
            session = emu.sessions(0)[0]
            start = session.seq + 1
            stream = emu.stream(0, rate=2000, count=2000)
            await eventually(lambda: session.seq > start + 400)
            proc = sup.workers[0].proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)
            await stream
            final = session.seq
            await eventually(lambda: set(range(start, final + 1)) <= seen, timeout=30)


async def test_hung_shard_is_killed_and_replaced(tmp_path: Path) -> None:
    async with emulator(shards=2) as emu, fleet(emu, tmp_path) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        worker = sup.workers[0]
        assert worker.proc is not None
        os.kill(worker.proc.pid, signal.SIGSTOP)
        await eventually(lambda: worker.restarts == 1, timeout=30)
        await eventually(lambda: all_ready(sup), timeout=30)
        assert worker.last_exit == "hung (no status)" or "signal 9" in worker.last_exit
        assert len(emu.gateway.identifies) == 2


async def test_stop_then_start_resumes_every_shard(tmp_path: Path) -> None:
    async with emulator(shards=3, max_concurrency=3) as emu:
        async with fleet(emu, tmp_path) as sup:
            await eventually(lambda: all_ready(sup), timeout=30)
        assert (tmp_path / "sessions.json").exists()
        assert len(emu.gateway.identifies) == 3
        async with fleet(emu, tmp_path) as sup:
            await eventually(lambda: all_ready(sup), timeout=30)
            assert sup.resumed_from_disk == 3
            assert len(emu.gateway.identifies) == 3  # zero new identifies
            assert all(s.connection is not None for s in emu.sessions() if not s.invalid)


async def test_rolling_restart_resumes_each_shard(tmp_path: Path) -> None:
    async with emulator(shards=3, max_concurrency=3) as emu, fleet(emu, tmp_path) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        pids = {w.shard: w.proc.pid for w in sup.workers.values() if w.proc}
        spawner = sup.shards.spawner
        assert isinstance(spawner, ZygoteSpawner) and spawner.zygote_pid is not None
        old_zygote = spawner.zygote_pid
        assert {parent_of(pid) for pid in pids.values()} == {old_zygote}
        await asyncio.wait_for(sup.rolling_restart(), 60)
        await eventually(lambda: all_ready(sup), timeout=30)
        assert all(w.proc and w.proc.pid != pids[w.shard] for w in sup.workers.values())
        assert len(emu.gateway.identifies) == 3  # everyone resumed
        # The new processes fork from a fresh zygote (the code on disk now: a new version);
        # the old zygote is gone.
        new = {w.proc.pid for w in sup.workers.values() if w.proc}
        assert spawner.zygote_pid not in (None, old_zygote)
        assert {parent_of(pid) for pid in new} == {spawner.zygote_pid}
        assert not Path(f"/proc/{old_zygote}").exists()


def parent_of(pid: int) -> int:
    """A process's parent pid, from /proc (the fields after the name in parentheses)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


async def test_commands_are_routed_by_guild(tmp_path: Path) -> None:
    async with emulator(shards=4) as emu, fleet(emu, tmp_path, ids="0-2", count=4) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        async with app(sup) as client:
            guild = next(g for g in emu.world.guild_ids if shard_for(g, 4) == 2)
            reply = await client.send(RequestGuildMembers(guild_id=guild, user_ids=[1], nonce="n"))
            assert isinstance(reply, Routed) and reply.routed == "shard:2"
            await emu.wait_until(lambda: bool(emu.received(2, op=8)))
            assert emu.received(2, op=8)[0].d["guild_id"] == str(guild)
            elsewhere = next(g for g in emu.world.guild_ids if shard_for(g, 4) == 3)
            with pytest.raises(CommandError, match="shard 3 is not run by this host"):
                await client.send(RequestGuildMembers(guild_id=elsewhere, user_ids=[1]))
            reply = await client.request("NOT_A_COMMAND", {})
            assert reply["error"] == "unknown command type 'NOT_A_COMMAND'"
            assert (reply["ok"], reply["code"], reply["reply"]) == (
                False,
                "unknown_command",
                "shardline.reply.error",
            )
            reply = await client.request("REQUEST_GUILD_MEMBERS", {"user_ids": ["1"]})
            assert not reply["ok"] and "'guild_id' is required" in reply["error"]


async def test_refuses_to_start_without_enough_identifies(tmp_path: Path) -> None:
    async with emulator(shards=4, session_start_remaining=2) as emu:
        config = make_config(emu, tmp_path)
        plan = await asyncio.to_thread(plan_fleet, config, emu.rules.token)
        supervisor = Supervisor(config, plan, emu.rules.token, runtime_dir=tmp_path)
        with pytest.raises(StartupError, match=r"allows 2 more identifies.*4 shards need one"):
            await supervisor.run(asyncio.Event())
        assert emu.gateway.identifies == []


async def test_refuses_to_start_with_a_ca_file_that_is_not_pem(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus-ca.pem"
    bogus.write_text("not a certificate\n")
    async with emulator(shards=2) as emu:
        config = make_config(emu, tmp_path / "run")
        config = replace(config, discord=replace(config.discord, ca_file=str(bogus)))
        with pytest.raises(ConfigError, match=r"discord.ca_file = .*bogus-ca.pem"):
            await asyncio.to_thread(plan_fleet, config, emu.rules.token)
        assert emu.gateway.identifies == []


async def test_a_shard_refusing_its_environment_stops_the_fleet_without_respawning(
    tmp_path: Path,
) -> None:
    async with emulator(shards=2) as emu:
        config = make_config(emu, tmp_path)
        plan = await asyncio.to_thread(plan_fleet, config, emu.rules.token)
        # The CA file went away after the start-up check: every shard would exit 2.
        gone = replace(config.discord, ca_file=str(tmp_path / "deleted-ca.pem"))
        lines: list[str] = []
        supervisor = Supervisor(
            replace(config, discord=gone),
            plan,
            emu.rules.token,
            runtime_dir=tmp_path,
            identify_interval=INTERVAL,
            progress=lines.append,
        )
        assert await asyncio.wait_for(supervisor.run(asyncio.Event()), 60) == 1
        assert "exit status 2" in supervisor.fatal_message
        assert all(worker.restarts == 0 for worker in supervisor.workers.values())
        assert emu.gateway.identifies == []


async def test_fatal_close_stops_the_fleet_without_a_crash_loop(tmp_path: Path) -> None:
    async with emulator(shards=2) as emu:
        config = make_config(emu, tmp_path)
        plan = await asyncio.to_thread(plan_fleet, config, emu.rules.token)
        lines: list[str] = []
        supervisor = Supervisor(
            config,
            plan,
            emu.rules.token,
            runtime_dir=tmp_path,
            identify_interval=INTERVAL,
            progress=lines.append,
        )
        task = asyncio.create_task(supervisor.run(asyncio.Event()))
        await eventually(lambda: all_ready(supervisor), timeout=30)
        await emu.close_shard(0, 4004)
        assert await asyncio.wait_for(task, 30) == 1
        assert "DISCORD_TOKEN" in supervisor.fatal_message
        assert supervisor.workers[0].restarts == 0
        assert any("stopped" in line and "4004" in line for line in lines)


async def test_tcp_endpoints_admit_only_listed_client_keys(tmp_path: Path) -> None:
    import socket

    import zmq

    from ipc.client import request_sync
    from runtime.curveauth import read_local_key

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    public, secret = (k.decode() for k in zmq.curve_keypair())
    app_public, app_secret = (k.decode() for k in zmq.curve_keypair())
    _, stranger_secret = (k.decode() for k in zmq.curve_keypair())
    commands = f"tcp://127.0.0.1:{free_port()}"
    async with emulator(shards=1, max_concurrency=1) as emu:
        config = parse_config(
            {
                "discord": {"rest_url": emu.rest_url},
                "ipc": {
                    "runtime_dir": str(tmp_path),
                    "commands": commands,
                    "events": f"tcp://127.0.0.1:{free_port()}",
                    "curve_public_key": public,
                    "curve_secret_key": secret,
                    "client_public_keys": [app_public],
                },
            }
        )
        plan = await asyncio.to_thread(plan_fleet, config, emu.rules.token)
        stop = asyncio.Event()
        sup = Supervisor(config, plan, emu.rules.token, runtime_dir=tmp_path, progress=print)
        task = asyncio.create_task(sup.run(stop))
        try:
            await eventually(lambda: all_ready(sup), timeout=30)
            with pytest.raises(CommandError, match="did not answer"):  # no CURVE at all
                await asyncio.to_thread(request_sync, commands, GetStatus(), 1.0)
            # Knowing the server's public key is not enough: a key not on the list is refused,
            # and its `stop` never reaches the supervisor.
            with pytest.raises(CommandError, match="did not answer"):
                await asyncio.to_thread(
                    request_sync, commands, StopFleet(), 1.0, public, stranger_secret
                )
            assert sup.allow_list is not None and sup.allow_list.refused >= 1
            reply = await asyncio.to_thread(
                request_sync, commands, GetStatus(), 5.0, public, app_secret
            )
            assert isinstance(reply, StatusReply)
            assert FleetStatus.from_json(reply.status).shards[0].state is ShardState.READY
            local = read_local_key(tmp_path)  # what `shardline status` on this host uses
            assert local is not None and (tmp_path / "client.key").stat().st_mode & 0o777 == 0o600
            reply = await asyncio.to_thread(request_sync, commands, GetStatus(), 5.0, public, local)
            assert isinstance(reply, StatusReply)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def test_app_processes_split_guilds_and_send_commands(tmp_path: Path) -> None:
    async with emulator(shards=2) as emu:
        config = make_config(emu, tmp_path)
        config = parse_config(
            {
                "discord": {"rest_url": emu.rest_url},
                "ipc": {"runtime_dir": str(tmp_path)},
                "restart": {"backoff_initial": 0.1},
                "apps": [{"module": "examples.bot", "processes": 2}],
            }
        )
        plan = await asyncio.to_thread(plan_fleet, config, emu.rules.token)
        stop = asyncio.Event()
        sup = Supervisor(
            config,
            plan,
            emu.rules.token,
            runtime_dir=tmp_path,
            identify_interval=INTERVAL,
            progress=lambda line: None,
        )
        task = asyncio.create_task(sup.run(stop))
        try:
            await eventually(lambda: all_ready(sup), timeout=30)
            assert [a["state"] for a in sup.status().to_json()["apps"]] == ["running", "running"]
            guilds = emu.world.guild_ids[:4]
            # The apps' subscriptions reach the bus a moment after they start, and nothing
            # announces it: ping in rounds until a round is answered in full.
            pings = 0
            for _ in range(30):
                target = len(emu.received(op=3)) + len(guilds)
                for gid in guilds:
                    await emu.message(gid, "!ping")
                pings += len(guilds)
                with contextlib.suppress(TimeoutError):
                    await emu.wait_until(
                        lambda target=target: len(emu.received(op=3)) >= target, timeout=1
                    )
                    break
            presences = emu.received(op=3)
            assert len(presences) <= pings  # each ping answered at most once
            assert {r.shard_id for r in presences} == {0, 1}  # through the owning shards
            assert all(r.d["activities"][0]["name"].startswith("pong for ") for r in presences)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        assert all(a.proc is None for a in sup.apps)  # no orphan app processes


async def test_voice_join_play_and_rejoin_after_a_kill(tmp_path: Path) -> None:
    import math
    import struct

    async with emulator(shards=2) as emu:
        assert emu.voice is not None
        config = voice_config(
            emu, tmp_path, ["guilds", "guild_voice_states"], restart={"backoff_initial": 0.1}
        )
        pcm = tmp_path / "tone.pcm"
        pcm.write_bytes(
            b"".join(
                struct.pack("<hh", v, v)
                for v in (int(5000 * math.sin(i / 20)) for i in range(960 * 10))
            )
        )
        async with fleet_with(config, emu, tmp_path) as sup, app(sup) as client:
            await eventually(lambda: all_ready(sup), timeout=30)
            guild = emu.world.guild_ids[0]
            channel = emu.world.voice_channel_id(guild)
            reply = await client.join_voice(guild, channel)
            assert isinstance(reply, Routed) and reply.routed.startswith("shard:")

            def voice_state() -> str:
                sessions = sup.status().to_json()["voice"]
                return sessions[0]["state"] if sessions else "none"

            await eventually(lambda: voice_state() == "connected", timeout=30)
            reply = await client.play(guild, str(pcm))
            assert isinstance(reply, Routed) and reply.routed == f"voice:{guild}"
            await emu.voice.wait_until(
                lambda: any(len(r.packets) >= 15 for r in emu.voice.sessions.values())
            )
            record = next(r for r in emu.voice.sessions.values() if len(r.packets) >= 15)
            assert record.undecryptable == 0 and record.speaking[0] == 1
            # kill the voice process: the supervisor joins again
            voice = sup.voice[guild]
            assert voice.proc is not None
            voice.proc.kill()
            await eventually(lambda: voice.rejoins == 1 and voice_state() == "connected", 30)
            assert len(emu.voice.sessions) == 2  # a second, fresh voice session
            await client.leave_voice(guild)
            assert sup.status().voice == []
            with pytest.raises(CommandError) as refused:
                await client.play(guild, str(pcm))
            assert str(refused.value) == f"voice not connected in guild {guild}"
            assert refused.value.reply is not None
            assert refused.value.reply.error_code is ErrorCode.UNAVAILABLE


async def test_example_bot_plays_a_clip_on_request(tmp_path: Path) -> None:
    async with emulator(shards=1, max_concurrency=1) as emu:
        assert emu.voice is not None
        config = voice_config(
            emu,
            tmp_path,
            ["guilds", "guild_messages", "guild_voice_states"],
            apps=[{"module": "examples.bot"}],
        )
        async with fleet_with(config, emu, tmp_path) as sup:
            await eventually(lambda: all_ready(sup), timeout=30)
            guild = emu.world.guild_ids[0]
            channel = emu.world.voice_channel_id(guild)
            for _ in range(30):  # the app subscribes a moment after it starts
                await emu.message(guild, f"!play {channel}")
                with contextlib.suppress(TimeoutError):
                    await emu.voice.wait_until(lambda: bool(emu.voice.sessions), timeout=1)  # type: ignore[union-attr]
                    break
            await emu.voice.wait_until(
                lambda: any(len(r.packets) >= 55 for r in emu.voice.sessions.values()),  # type: ignore[union-attr]
                timeout=30,
            )
            record = next(r for r in emu.voice.sessions.values() if len(r.packets) >= 55)
            assert record.undecryptable == 0 and record.speaking[0] == 1


async def test_rolling_restart_loses_no_dispatch(tmp_path: Path) -> None:
    from ipc.codec import decode_bus

    async with emulator(shards=2, max_concurrency=2) as emu, fleet(emu, tmp_path) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        async with app(sup) as client:
            seen: dict[tuple[str, str | None], set[int]] = {}
            original = client._dispatch

            async def spy(frames: list[bytes]) -> None:
                envelope, _ = decode_bus(frames)
                if envelope.kind == "dispatch" and envelope.seq is not None:
                    seen.setdefault((envelope.source, envelope.session), set()).add(envelope.seq)
                await original(frames)

            client._dispatch = spy  # type: ignore[method-assign]
            await client.send(GetStatus())
            sessions = {s.shard_id: s for s in emu.sessions() if not s.invalid}
            start = {shard: s.seq + 1 for shard, s in sessions.items()}
            streams = [emu.stream(shard, rate=500, count=1500) for shard in (0, 1)]
            await asyncio.wait_for(sup.rolling_restart(), 60)
            for stream in streams:
                await stream
            for shard, session in sessions.items():
                key = (f"shard:{shard}", session.id)
                final = session.seq
                await eventually(
                    lambda key=key, shard=shard, final=final: (
                        set(range(start[shard], final + 1)) <= seen.get(key, set())
                    ),
                    timeout=30,
                )
            assert len(emu.gateway.identifies) == 2  # both shards resumed their sessions


async def test_voice_region_move_and_rejoin_after_4006(tmp_path: Path) -> None:
    async with emulator(shards=1, max_concurrency=1) as emu:
        assert emu.voice is not None
        voice_server = emu.voice
        config = voice_config(emu, tmp_path, ["guilds", "guild_voice_states"])
        async with fleet_with(config, emu, tmp_path) as sup, app(sup) as client:
            await eventually(lambda: all_ready(sup), timeout=30)
            guild = emu.world.guild_ids[0]
            await client.join_voice(guild, emu.world.voice_channel_id(guild))

            def connected(sessions: int) -> bool:
                voice = sup.status().to_json()["voice"]
                return (
                    bool(voice)
                    and voice[0]["state"] == "connected"
                    and len(voice_server.sessions) == sessions
                )

            await eventually(lambda: connected(1), timeout=30)
            pid = sup.voice[guild].proc.pid  # type: ignore[union-attr]
            endpoint = await emu.move_voice(guild)  # same process, new server
            await eventually(lambda: connected(2), timeout=30)
            assert sup.voice[guild].endpoint == endpoint
            assert sup.voice[guild].proc.pid == pid  # type: ignore[union-attr]
            await voice_server.close_session(4006, "session no longer valid")
            await eventually(lambda: sup.voice[guild].rejoins == 1 and connected(3), timeout=30)


async def test_voice_queue_pause_resume_and_volume_commands(tmp_path: Path) -> None:
    import math
    import struct

    async with emulator(shards=1, max_concurrency=1) as emu:
        assert emu.voice is not None
        voice_server = emu.voice
        config = voice_config(emu, tmp_path, ["guilds", "guild_voice_states"])
        clips = []
        for n, freq in enumerate((300, 600)):
            path = tmp_path / f"clip{n}.pcm"
            path.write_bytes(
                b"".join(
                    struct.pack("<hh", v, v)
                    for v in (int(5000 * math.sin(freq * i / 48_000)) for i in range(960 * 10))
                )
            )
            clips.append(path)
        async with fleet_with(config, emu, tmp_path) as sup, app(sup) as client:
            await eventually(lambda: all_ready(sup), timeout=30)
            guild = emu.world.guild_ids[0]
            await client.join_voice(guild, emu.world.voice_channel_id(guild))
            await eventually(
                lambda: (
                    bool(sup.status().voice) and sup.status().voice[0].state is VoiceState.CONNECTED
                ),
                timeout=30,
            )
            await client.play(guild, str(clips[0]))
            await client.play(guild, str(clips[1]), queue=True)
            await voice_server.wait_until(
                lambda: sum(len(r.packets) for r in voice_server.sessions.values()) == 30
            )  # both clips, each ending in five silence frames
            for reply in (
                await client.pause(guild),
                await client.resume(guild),
                await client.set_volume(guild, 0.5),
            ):
                assert isinstance(reply, Routed) and reply.routed == f"voice:{guild}"
            with pytest.raises(CommandError, match=r"outside 0\.0-2\.0"):
                await client.set_volume(guild, 5.0)


async def test_voice_events_received_audio_and_recording_through_the_supervisor(
    tmp_path: Path,
) -> None:
    """With voice.receive on: track start/end and stats reach the app on the bus, a member's
    end-to-end encrypted frames arrive decrypted as VoiceAudio events, and `record` writes
    one WAV per member."""
    import wave

    from ipc.voice import TrackEnd, TrackStart, VoiceAudio, VoiceStats
    from tests.voiceworker.test_dave_session import frames

    async with emulator(shards=1, max_concurrency=1) as emu:
        assert emu.voice is not None
        voice_server = emu.voice
        config = voice_config(
            emu,
            tmp_path,
            ["guilds", "guild_voice_states"],
            voice={"receive": True, "record_dir": str(tmp_path / "rec")},
        )
        clip = tmp_path / "clip.pcm"
        clip.write_bytes(bytes(3840 * 4))
        async with fleet_with(config, emu, tmp_path) as sup, app(sup) as client:
            seen: list[Any] = []
            for cls in (TrackStart, TrackEnd, VoiceAudio, VoiceStats):
                client.on(cls)(seen.append)
            await eventually(lambda: all_ready(sup), timeout=30)
            guild = emu.world.guild_ids[0]
            channel = emu.world.voice_channel_id(guild)
            member = await voice_server.add_member(channel, 4242)
            await client.join_voice(guild, channel)
            await eventually(
                lambda: (
                    bool(sup.status().voice) and sup.status().voice[0].state is VoiceState.CONNECTED
                ),
                timeout=30,
            )
            await eventually(lambda: member.ready, timeout=10)  # the DAVE group formed
            await eventually(lambda: any(isinstance(e, VoiceStats) and e.e2ee for e in seen), 15)
            await client.play(guild, str(clip))
            await eventually(lambda: any(isinstance(e, TrackEnd) for e in seen), timeout=15)
            start = next(e for e in seen if isinstance(e, TrackStart))
            end = next(e for e in seen if isinstance(e, TrackEnd))
            assert start.guild_id == guild and start.path == str(clip)
            assert (end.reason, end.frames, end.error) == ("finished", 4 + 5, None)

            reply = await client.record(guild)
            directory = Path(reply.directory)
            spoken = frames(6)
            await eventually(lambda: directory.is_dir(), timeout=10)
            await voice_server.member_speaks(4242, spoken)
            audio = lambda: [e for e in seen if isinstance(e, VoiceAudio)]  # noqa: E731
            await eventually(lambda: len(audio()) == 6, timeout=10)
            assert [(e.guild_id, e.user_id, e.opus) for e in audio()] == [
                (guild, 4242, f) for f in spoken
            ]
            await client.record(guild, stop=True)
            path = directory / "4242.wav"

            def finished() -> bool:
                try:
                    with wave.open(str(path)) as w:
                        return w.getnframes() == 6 * 960
                except (OSError, EOFError, wave.Error):
                    return False

            await eventually(finished, timeout=10)


async def test_an_endpoint_in_use_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    import socket

    import zmq

    public, secret = (k.decode() for k in zmq.curve_keypair())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with emulator(shards=1, max_concurrency=1) as emu:
            config = parse_config(
                {
                    "discord": {"rest_url": emu.rest_url},
                    "ipc": {
                        "runtime_dir": str(tmp_path),
                        "commands": f"tcp://127.0.0.1:{port}",
                        "curve_public_key": public,
                        "curve_secret_key": secret,
                    },
                }
            )
            plan = await asyncio.to_thread(plan_fleet, config, emu.rules.token)
            sup = Supervisor(config, plan, emu.rules.token, runtime_dir=tmp_path)
            with pytest.raises(StartupError, match=f"cannot listen on tcp://127.0.0.1:{port}"):
                await asyncio.wait_for(sup.run(asyncio.Event()), 10)
            assert emu.gateway.identifies == []
            assert not (tmp_path / "supervisor.pid").exists()


async def test_a_large_bot_runs_a_multiple_of_its_concurrency(tmp_path: Path) -> None:
    """Large-bot sharding: Discord's recommendation rounded up to a multiple of
    max_concurrency; an explicit count that is not one is refused before anything starts."""
    from runtime.reshard import round_up, shard_multiple

    assert shard_multiple(None, 16) == 16 and shard_multiple(None, 1) == 1
    assert shard_multiple(8, 16) == 8 and round_up(40, 16) == 48 and round_up(48, 16) == 48
    async with emulator(shards=6, max_concurrency=4) as emu:
        plan = await asyncio.to_thread(plan_fleet, make_config(emu, tmp_path), emu.rules.token)
        assert plan.shard_count == 8 and plan.shard_ids == tuple(range(8))
        explicit = make_config(emu, tmp_path, count=6)
        with pytest.raises(StartupError, match=r"shards.count = 6 is not a multiple of 4.*4010"):
            await asyncio.to_thread(plan_fleet, explicit, emu.rules.token)
        allowed = make_config(emu, tmp_path, count=6, multiple_of=2)
        plan = await asyncio.to_thread(plan_fleet, allowed, emu.rules.token)
        assert plan.shard_count == 6
