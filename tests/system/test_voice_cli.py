"""The voice path as an operator drives it: `shardline run`, then `shardline voice join` and
`voice play` with the bundled sample, `status` showing the session, and a killed voice
process rejoined by the supervisor. Everything but the emulator is a separate process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emulator import Emulator, EmulatorConfig, GatewayRules, WorldConfig
from voiceworker.ogg import ogg_packets

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample.opus"


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


async def status(config: Path) -> dict[str, Any]:
    done = await asyncio.to_thread(cli, config, "status", "--json")
    return dict(json.loads(done.stdout)) if done.returncode == 0 else {}


async def until(config: Path, check: Callable[[dict[str, Any]], bool], timeout: float = 60) -> None:
    """Ask `shardline status --json` until ``check`` holds (no event tells us sooner)."""
    async with asyncio.timeout(timeout):
        while not check(await status(config)):
            pass


def voice_session(s: dict[str, Any]) -> dict[str, Any]:
    return dict(s["voice"][0]) if s.get("voice") else {}


async def test_voice_join_play_status_and_rejoin_from_the_command_line(tmp_path: Path) -> None:
    config = EmulatorConfig(rules=GatewayRules(identify_interval=0), world=WorldConfig(guilds=2))
    async with Emulator(config) as emu:
        assert emu.voice is not None
        path = tmp_path / "shardline.toml"
        path.write_text(
            f'[discord]\nrest_url = "{emu.rest_url}"\nca_file = "{emu.voice.ca_file}"\n'
            '[shards]\nintents = ["guilds", "guild_voice_states"]\n'
            f'[ipc]\nruntime_dir = "{tmp_path / "run"}"\n[log]\nlevel = "warning"\n'
        )
        supervisor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.cli", "run", "--config", str(path),
            "--identify-interval", "0.1",
            env={**os.environ, "DISCORD_TOKEN": emu.rules.token},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await until(path, lambda s: bool(s) and all(x["state"] == "ready" for x in s["shards"]))
            guild = emu.world.guild_ids[0]
            channel = emu.world.voice_channel_id(guild)
            joined = await asyncio.to_thread(cli, path, "voice", "join", str(guild), str(channel))
            assert joined.returncode == 0, joined.stderr
            await until(path, lambda s: voice_session(s).get("state") == "connected")
            played = await asyncio.to_thread(cli, path, "voice", "play", str(guild), str(SAMPLE))
            assert played.returncode == 0 and f"voice:{guild}" in played.stdout, played.stderr
            with open(SAMPLE, "rb") as f:
                in_file = list(ogg_packets(f))[2:]
            record = next(iter(emu.voice.sessions.values()))
            await emu.voice.wait_until(lambda: len(record.packets) == len(in_file) + 5, 30)
            assert [p.opus for p in record.packets[: len(in_file)]] == in_file  # passed through
            table = await asyncio.to_thread(cli, path, "status")
            assert str(guild) in table.stdout and "connected" in table.stdout

            pid = voice_session(await status(path))["pid"]
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not any(v.startswith(b"DISCORD_TOKEN=") for v in environ)  # not its token
            assert any(v.startswith(b"SHARDLINE_VOICE_TOKEN=") for v in environ)
            os.kill(pid, signal.SIGKILL)
            await until(
                path,
                lambda s: (
                    voice_session(s).get("rejoins") == 1
                    and voice_session(s).get("state") == "connected"
                    and voice_session(s).get("pid") != pid
                ),
            )
            assert len(emu.voice.sessions) == 2  # a fresh voice session
            stopped = await asyncio.to_thread(cli, path, "stop")
            assert stopped.returncode == 0, stopped.stderr
            assert await asyncio.wait_for(supervisor.wait(), 30) == 0
            assert not list((tmp_path / "run").glob("*.sock"))  # stop leaves no socket behind
        finally:
            if supervisor.returncode is None:
                supervisor.kill()
                await supervisor.wait()
