"""The command line as a person uses it: help text, and the emulator as a program."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

from emulator import DEFAULT_TOKEN
from runtime.cli import build_parser


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_only_commands_that_exist() -> None:
    out = run_cli("--help").stdout
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert name in out
    assert "emulator" in commands


def test_emulator_help_documents_the_interface() -> None:
    out = run_cli("emulator", "--help").stdout
    for flag in (
        "--host",
        "--port",
        "--token",
        "--guilds",
        "--shards",
        "--max-concurrency",
        "--identify-interval",
    ):
        assert flag in out
    assert "emulator ready rest=" in out


def request(url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        req.add_header("Authorization", f"Bot {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_emulator_program_serves_rest_and_control_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.cli",
            "emulator",
            "--guilds",
            "7",
            "--shards",
            "2",
            "--max-concurrency",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        match = re.fullmatch(r"emulator ready rest=(http://\S+/api/v10) gateway=(ws://\S+)", line)
        assert match, line
        rest, gateway = match.groups()
        assert request(f"{rest}/gateway") == (200, {"url": gateway})
        status, body = request(f"{rest}/gateway/bot", token=DEFAULT_TOKEN)
        assert status == 200 and body["shards"] == 2
        assert body["session_start_limit"]["max_concurrency"] == 4
        assert request(f"{rest}/gateway/bot", token="wrong")[0] == 401
        assert request(f"{rest}/gateway/bot")[0] == 401
        base = rest.removesuffix("/api/v10")
        status, state = request(f"{base}/_emulator/state")
        assert status == 200 and state["guilds"] == 7 and state["sessions"] == []
        status, result = request(f"{base}/_emulator/inject", {"t": "X", "d": {}, "shard": 0})
        assert (status, result) == (200, {"seqs": []})  # no session for shard 0 yet
        assert request(f"{base}/_emulator/frobnicate", {})[0] == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def run_command(config: Any, *flags: str) -> subprocess.CompletedProcess[str]:
    """``shardline run --config CONFIG FLAGS`` with a token and nothing else inherited."""
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "run", "--config", str(config), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env={"DISCORD_TOKEN": DEFAULT_TOKEN, "PATH": "/usr/bin:/bin"},
    )


def test_a_missing_ca_file_is_a_config_error_with_exit_status_2(tmp_path: Any) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[discord]\nrest_url = "http://127.0.0.1:9/api/v10"\n'
        f'ca_file = "{tmp_path / "missing.pem"}"\n[ipc]\nruntime_dir = "{tmp_path / "run"}"\n'
    )
    done = run_command(config)
    assert done.returncode == 2 and "discord.ca_file" in done.stderr


def test_keygen_prints_a_usable_keypair() -> None:
    import zmq

    out = run_cli("keygen").stdout.split()
    public, secret = out[out.index("public") + 1], out[out.index("secret") + 1]
    assert zmq.curve_public(secret.encode()).decode() == public


def test_run_flags_override_config_keys_and_are_checked_like_them(tmp_path: Any) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[shards]\ncount = 8\n[ipc]\nruntime_dir = "{tmp_path / "run"}"\n')
    for flags, key in (
        (["--shard-ids", "6-9"], "--shard-ids"),  # past shards.count
        (["--shard-ids", "x"], "--shard-ids"),
        (["--metrics-listen", "9464"], "--metrics-listen"),
    ):
        done = run_command(config, *flags)
        assert done.returncode == 2 and key in done.stderr, done.stderr


def test_a_fleet_whose_redis_is_unreachable_says_so_without_the_password(
    tmp_path: Any,
) -> None:
    from tests.system.test_supervisor import emulator

    async def check() -> None:
        async with emulator(shards=1) as emu:
            config = tmp_path / "c.toml"
            missing = tmp_path / "no-redis.sock"
            config.write_text(
                f'[discord]\nrest_url = "{emu.rest_url}"\n'
                f'[ipc]\nruntime_dir = "{tmp_path / "run"}"\n'
                f'[cluster]\nredis_url = "unix://:pw-secret@{missing}"\nfleet = "bot"\n'
            )
            done = await asyncio.to_thread(run_command, config)
            assert done.returncode == 1 and "cannot reach Redis" in done.stderr, done.stderr
            assert "pw-secret" not in done.stderr and done.stdout.count("pw-secret") == 0

    asyncio.run(check())
