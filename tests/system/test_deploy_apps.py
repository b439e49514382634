"""`shardline deploy`: every application process replaced by one running the code on disk
now, one at a time, while the shards run and messages flow: nothing goes unhandled."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from emulator import Emulator
from ipc.client import Client
from ipc.requests import Deploy, Deploying
from ipc.states import VoiceState
from runtime.config import parse_config
from tests.shards.helpers import eventually
from tests.system.test_reshard import chatter
from tests.system.test_supervisor import all_ready, app, emulator, fleet_with, voice_config

pytestmark = pytest.mark.slow

APP = """
import os

from ipc.events import MessageCreate

VERSION = {version}


async def main(client):
    log = open(os.environ["DEPLOY_LOG"] + "." + str(os.getpid()), "a", buffering=1)

    @client.on(MessageCreate)
    def seen(event):
        log.write(f"{{VERSION}} {{event.raw['guild_id']}} {{event.raw['shardline_guild_seq']}}\\n")

    await client.wait_closed()
"""


def handled(root: Path) -> dict[int, tuple[set[int], dict[str, set[int]]]]:
    """Per app process (pid): the versions it ran, and each guild's numbers it handled."""
    out: dict[int, tuple[set[int], dict[str, set[int]]]] = {}
    for path in root.glob("handled.*"):
        versions: set[int] = set()
        guilds: dict[str, set[int]] = {}
        for line in path.read_text().splitlines():
            version, guild, number = line.split()
            versions.add(int(version))
            guilds.setdefault(guild, set()).add(int(number))
        out[int(path.suffix[1:])] = (versions, guilds)
    return out


def every_message_handled(root: Path, emu: Emulator) -> bool:
    """Each guild's messages, every number the emulator generated, handled by some process
    (old or new)."""
    together: dict[str, set[int]] = {}
    for _, guilds in handled(root).values():
        for guild, numbers in guilds.items():
            together.setdefault(guild, set()).update(numbers)
    return all(
        together.get(str(g), set()) == set(range(1, emu.world.messages_in(g) + 1))
        for g in emu.world.guild_ids
    )


async def test_a_deploy_replaces_every_app_process_and_loses_no_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "deployapp.py"
    module.write_text(APP.format(version=1))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("DEPLOY_LOG", str(tmp_path / "handled"))
    async with emulator(shards=2, max_concurrency=2) as emu:
        config = parse_config(
            {
                "discord": {"rest_url": emu.rest_url},
                "shards": {"intents": ["guilds", "guild_messages"]},
                "ipc": {"runtime_dir": str(tmp_path / "run")},
                "restart": {"backoff_initial": 0.1},
                "log": {"level": "warning"},
                "apps": [{"module": "deployapp", "processes": 2}],
            }
        )
        async with fleet_with(config, emu, tmp_path / "run") as sup:
            await eventually(lambda: all_ready(sup), timeout=30)
            await eventually(lambda: len(sup.wiring.subscribers()) == 2, timeout=30)
            first = {app.index: app.proc.pid for app in sup.apps if app.proc is not None}
            stop = asyncio.Event()
            talk = asyncio.create_task(chatter(emu, stop))
            client = Client(sup.endpoints.events, sup.endpoints.commands)
            try:
                await eventually(lambda: len(handled(tmp_path)) == 2, timeout=20)
                module.write_text(APP.format(version=2))  # the new code
                reply = await client.send(Deploy())
                assert isinstance(reply, Deploying)
                assert reply.raw["apps"] == ["deployapp[0]", "deployapp[1]"]

                def replaced() -> bool:  # each replaced once, its old process stopped
                    now = {a.index: a.proc.pid for a in sup.apps if a.proc is not None}
                    return all(a.deploys == 1 for a in sup.apps) and all(
                        now.get(i) not in (None, first[i]) for i in first
                    )

                await eventually(replaced, timeout=60)
                new_pids = {a.proc.pid for a in sup.apps if a.proc is not None}
                await eventually(
                    lambda: all(
                        handled(tmp_path).get(pid, (set(), {}))[0] == {2} for pid in new_pids
                    ),
                    timeout=20,
                )
            finally:
                stop.set()
                await talk
                client.close()
            # every message, in every guild, handled by some process (old or new)
            await eventually(lambda: every_message_handled(tmp_path, emu), timeout=20)
            assert {a.restarts for a in sup.apps} == {0}  # replaced, never crashed
            assert set(first.values()).isdisjoint(new_pids)


async def test_shardline_deploy_on_the_command_line(tmp_path: Path) -> None:
    from tests.system.test_voice_cli import ROOT, cli, until

    (tmp_path / "deployapp.py").write_text(APP.format(version=1))
    async with emulator(shards=1, max_concurrency=1) as emu:
        path = tmp_path / "shardline.toml"
        path.write_text(
            f'[discord]\nrest_url = "{emu.rest_url}"\n[shards]\nintents = ["guilds"]\n'
            f'[ipc]\nruntime_dir = "{tmp_path / "run"}"\n[log]\nlevel = "warning"\n'
            '[[apps]]\nmodule = "deployapp"\nprocesses = 2\n'
        )
        env = {
            **os.environ,
            "DISCORD_TOKEN": emu.rules.token,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "DEPLOY_LOG": str(tmp_path / "handled"),
        }
        supervisor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.cli", "run", "--config", str(path),
            "--identify-interval", "0.1", env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await until(path, lambda s: bool(s) and len(s["bus"]["subscribers"]) == 2)
            done = await asyncio.to_thread(cli, path, "deploy")
            assert done.returncode == 0, done.stderr
            assert "deploying 2 application processes" in done.stdout
            assert done.stdout.rstrip().endswith("2 of 2 replaced")
        finally:
            supervisor.terminate()
            await supervisor.wait()


def tone(path: Path, seconds: float) -> Path:
    """48 kHz stereo s16le PCM of a quiet tone (50 Opus frames a second)."""
    frames = int(seconds * 50)
    path.write_bytes(
        b"".join(
            struct.pack("<hh", v, v)
            for v in (int(4000 * math.sin(i / 20)) for i in range(960 * frames))
        )
    )
    return path


async def test_voice_plays_on_through_a_rolling_restart_and_a_deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new version rolled out while a guild listens: the shards are replaced one at a time
    (each resuming) and the application processes too, and the voice session is kept: the
    same process, not a packet missing (docs/resharding.md states the bound)."""
    (tmp_path / "deployapp.py").write_text(APP.format(version=1))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("DEPLOY_LOG", str(tmp_path / "handled"))
    async with emulator(shards=2, max_concurrency=2) as emu:
        assert emu.voice is not None
        voice_server = emu.voice
        config = voice_config(
            emu,
            tmp_path / "run",
            ["guilds", "guild_voice_states", "guild_messages"],
            apps=[{"module": "deployapp", "processes": 1}],
            log={"level": "warning"},
        )
        async with fleet_with(config, emu, tmp_path / "run") as sup, app(sup) as client:
            await eventually(lambda: all_ready(sup), timeout=30)
            guild = emu.world.guild_ids[0]
            await client.join_voice(guild, emu.world.voice_channel_id(guild))
            await eventually(
                lambda: (
                    bool(sup.status().voice) and sup.status().voice[0].state is VoiceState.CONNECTED
                ),
                timeout=30,
            )
            voice_pid = sup.voice[guild].proc.pid  # type: ignore[union-attr]
            shard_pids = {w.proc.pid for w in sup.workers.values() if w.proc}
            app_pids = {a.proc.pid for a in sup.apps if a.proc}
            identified = len(emu.gateway.identifies)
            await client.play(guild, str(tone(tmp_path / "long.pcm", 60)))

            def packets() -> list[int]:
                return [p.seq for r in voice_server.sessions.values() for p in r.packets]

            await voice_server.wait_until(lambda: len(packets()) >= 10)
            deploy = await client.send(Deploy())
            assert isinstance(deploy, Deploying)
            await asyncio.wait_for(sup.rolling_restart(), 60)
            await eventually(
                lambda: all(a.deploys == 1 for a in sup.apps) and all_ready(sup), timeout=60
            )
            during = len(packets())
            await voice_server.wait_until(lambda: len(packets()) >= during + 25)  # still playing
            seqs = packets()
            assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
            assert len(voice_server.sessions) == 1  # the one session, never joined again
            assert sup.voice[guild].proc.pid == voice_pid  # type: ignore[union-attr]
            assert sup.voice[guild].rejoins == 0
            assert shard_pids.isdisjoint(w.proc.pid for w in sup.workers.values() if w.proc)
            assert app_pids.isdisjoint(a.proc.pid for a in sup.apps if a.proc)
            assert len(emu.gateway.identifies) == identified  # every shard resumed
