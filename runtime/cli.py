"""The ``shardline`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from ipc.messages import Command, ErrorReply, Reply

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardline",
        description=(
            "Run a Discord bot as a fleet of processes: one per gateway shard and one per "
            "voice session. Without DISCORD_TOKEN, `shardline demo` runs everything against "
            "a local emulated Discord."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    emu = sub.add_parser(
        "emulator",
        help="serve a local Discord (REST + gateway) on loopback until Ctrl-C",
        description=(
            "Serve an emulated Discord: REST at http://HOST:PORT/api/v10, a gateway (v10, "
            "json, zlib-stream/zstd-stream) on its own port, and a JSON control API at "
            "http://HOST:PORT/_emulator/. Prints one line `emulator ready rest=... gateway=...` "
            "when listening, and runs until SIGINT or SIGTERM."
        ),
    )
    emu.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    emu.add_argument("--port", type=int, default=0, help="REST/control port (default: any free)")
    emu.add_argument(
        "--gateway-port", type=int, default=0, help="gateway websocket port (default: any free)"
    )
    emu.add_argument(
        "--token",
        default=None,
        help="the only bot token accepted (default: a fixed token in Discord's format, "
        "printed by `shardline emulator --print-token`)",
    )
    emu.add_argument("--print-token", action="store_true", help="print the default token and exit")
    emu.add_argument("--guilds", type=int, default=10, help="guilds the bot is in (default 10)")
    emu.add_argument(
        "--shards",
        type=int,
        default=0,
        help="shard count /gateway/bot recommends (default: one per 1000 guilds)",
    )
    emu.add_argument(
        "--max-concurrency",
        type=int,
        default=1,
        help="identify buckets: session_start_limit.max_concurrency (default 1)",
    )
    emu.add_argument(
        "--identify-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between identifies in one bucket (default 5, as Discord)",
    )
    emu.add_argument(
        "--heartbeat-interval",
        type=int,
        default=41_250,
        metavar="MS",
        help="heartbeat_interval sent in HELLO, in milliseconds (default 41250)",
    )
    emu.add_argument(
        "--large-share",
        type=float,
        default=0.05,
        help="fraction of guilds with thousands of members (default 0.05)",
    )
    emu.add_argument(
        "--large-members",
        type=int,
        default=5000,
        help="members in each large guild (default 5000)",
    )
    emu.add_argument("--seed", type=int, default=0, help="seed for the generated guilds")
    emu.set_defaults(func=_cmd_emulator)

    run = sub.add_parser(
        "run",
        help="run the fleet described by a config file (needs the token in the environment)",
        description=(
            "Start the supervisor: ask Discord for the shard count and identify limits, start "
            "one process per shard, grant identifies bucket by bucket, respawn what dies, and "
            "serve the event bus and the command socket. Runs until Ctrl-C, SIGTERM or "
            "`shardline stop`; shards then close resumably and their sessions are saved so the "
            "next run resumes them."
        ),
    )
    run.add_argument("--config", default="config/shardline.toml", help="TOML config file")
    run.add_argument(
        "--identify-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between identifies per bucket (Discord: 5; lower only for emulators)",
    )
    run.add_argument(
        "--shard-ids",
        metavar="IDS",
        help='run these shards, like "0-15" or "0-3,8" (overrides shards.ids in the config)',
    )
    run.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve /metrics, /healthz, /readyz here (overrides metrics.listen; '' turns off)",
    )
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="show the running fleet")
    status.add_argument("--config", default="config/shardline.toml", help="TOML config file")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument(
        "--watch",
        action="store_true",
        help="redraw the table in place every second (per-shard events/s and latency) until Ctrl-C",
    )
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between redraws (default 1)"
    )
    status.set_defaults(func=_cmd_status)

    stop = sub.add_parser("stop", help="stop the running fleet (sessions are saved)")
    stop.add_argument("--config", default="config/shardline.toml", help="TOML config file")
    stop.set_defaults(func=_cmd_stop)

    restart = sub.add_parser(
        "restart", help="replace shard processes: `restart shard N` or `restart --rolling`"
    )
    restart.add_argument("target", nargs="*", metavar="shard N", help="the shard to replace")
    restart.add_argument(
        "--rolling", action="store_true", help="replace every shard, one at a time, each resuming"
    )
    restart.add_argument("--config", default="config/shardline.toml", help="TOML config file")
    restart.set_defaults(func=_cmd_restart)

    reshard = sub.add_parser(
        "reshard",
        help="change the shard count with no event lost: `reshard --count M [--dry-run]`",
        description=(
            "Start M shards beside the running ones (on the identify schedule), switch the "
            "applications to them once every new shard is READY with its guilds (no event "
            "lost or delivered twice: docs/resharding.md), then close the old ones. Refused, "
            "with the numbers, when today's identify budget cannot cover M identifies. "
            "Prints progress until it is done; Ctrl-C calls it off (the running shards are "
            "untouched). Exit status: 0 done, 1 refused or aborted."
        ),
    )
    reshard.add_argument("--count", type=int, required=True, help="the new shard count")
    reshard.add_argument(
        "--dry-run", action="store_true", help="only check, and say what it would take"
    )
    reshard.add_argument("--config", default="config/shardline.toml", help="TOML config file")
    reshard.set_defaults(func=_cmd_reshard)

    deploy = sub.add_parser(
        "deploy",
        help="replace every application process with the new code, one at a time",
        description=(
            "Start a fresh process for each [[apps]] process in turn (its module imported "
            "anew: the code on disk now), wait until it is subscribed, then stop the old one: "
            "the shards keep running and no event goes unhandled. Prints progress until every "
            "process is replaced. Exit status: 0 all replaced, 1 otherwise."
        ),
    )
    deploy.add_argument("--config", default="config/shardline.toml", help="TOML config file")
    deploy.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait per process (default 60)"
    )
    deploy.set_defaults(func=_cmd_deploy)

    voice = sub.add_parser(
        "voice",
        help="voice sessions: join GUILD CHANNEL | leave | play GUILD FILE [--queue] | stop | "
        "pause | resume | volume GUILD N | record GUILD [--stop]",
        description=(
            "Ask the running supervisor to join a voice channel (one voice process per guild), "
            "leave it, play an audio file (anything ffmpeg reads; .pcm files are raw s16le "
            "48 kHz stereo; Ogg Opus is sent without re-encoding), stop playing, or record "
            "every member to one WAV file each (voice.record_dir; --stop ends it)."
        ),
    )
    voice.add_argument(
        "action",
        choices=["join", "leave", "play", "stop", "pause", "resume", "volume", "record"],
    )
    voice.add_argument("guild", type=int, help="guild id")
    voice.add_argument(
        "arg", nargs="?", help="join: the channel id; play: the file; volume: 0.0-2.0"
    )
    voice.add_argument("--queue", action="store_true", help="play: after what is playing")
    voice.add_argument("--stop", action="store_true", help="record: stop recording")
    voice.add_argument("--config", default="config/shardline.toml", help="TOML config file")
    voice.set_defaults(func=_cmd_voice)

    demo = sub.add_parser(
        "demo",
        help="run the supervisor and 4 shards against the embedded emulator (no token needed)",
        description=(
            "Start the emulator in this process, then the supervisor with one process per shard "
            "(4 by default), inject a message every few seconds, follow it through the event "
            "bus with an application client, and print the status table. Ctrl-C stops "
            "everything cleanly."
        ),
    )
    demo.add_argument("--guilds", type=int, default=40, help="guilds in the emulator (default 40)")
    demo.add_argument("--shards", type=int, default=4, help="shards to run (default 4)")
    demo.add_argument(
        "--message-every",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="inject a MESSAGE_CREATE this often (default 2)",
    )
    demo.set_defaults(func=_cmd_demo)

    keygen = sub.add_parser(
        "keygen",
        help="make a CURVE keypair for an application that connects over tcp://",
        description=(
            "Print a new CURVE keypair. Add the public key to ipc.client_public_keys in the "
            "supervisor's config (and restart it); give the secret key to the application "
            "only, as SHARDLINE_CLIENT_KEY (or ipc.Client(client_key=...)). Clients whose "
            "public key is not listed are refused by the tcp:// endpoints."
        ),
    )
    keygen.set_defaults(func=_cmd_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        code = 130
    return code


def _run_until_signal(coro_factory: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``coro_factory(stop_event)`` until SIGINT/SIGTERM sets the event."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await coro_factory(stop)

    asyncio.run(runner())


def _cmd_emulator(args: argparse.Namespace) -> int:
    from emulator.server import EmulatorConfig, run_forever
    from emulator.world import DEFAULT_TOKEN

    if args.print_token:
        print(DEFAULT_TOKEN)
        return 0
    config = EmulatorConfig(
        host=args.host,
        port=args.port,
        gateway_port=args.gateway_port,
        token=args.token or DEFAULT_TOKEN,
        guilds=args.guilds,
        shards=args.shards,
        max_concurrency=args.max_concurrency,
        identify_interval=args.identify_interval,
        heartbeat_interval_ms=args.heartbeat_interval,
        large_share=args.large_share,
        large_members=args.large_members,
        seed=args.seed,
    )
    try:
        _run_until_signal(lambda stop: run_forever(config, stop))
    except OSError as exc:
        print(f"shardline emulator: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 1
    return 0


def _load(path: str) -> object:
    from runtime.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"shardline: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _commands_endpoint(config: object) -> str:
    from runtime.config import Config
    from runtime.supervisor import Endpoints

    assert isinstance(config, Config)
    runtime_dir = config.ipc.resolved_runtime_dir()
    return Endpoints.in_dir(runtime_dir, config.ipc.events, config.ipc.commands).commands


def _with_overrides(config: Any, args: argparse.Namespace) -> Any:
    """The config with ``--shard-ids`` and ``--metrics-listen`` applied, checked as the keys
    they replace are (ConfigError names the flag)."""
    from runtime.config import ConfigError, parse_listen, parse_shard_ids

    if args.shard_ids is not None:
        try:
            ids = parse_shard_ids(args.shard_ids)
        except ValueError as exc:
            raise ConfigError("--shard-ids", args.shard_ids, f"shard ids ({exc})") from None
        count = config.shards.count
        if count is not None and max(ids) >= count:
            raise ConfigError(
                "--shard-ids", args.shard_ids, f"shard ids below shards.count ({count})"
            )
        config = replace(config, shards=replace(config.shards, ids=ids))
    if args.metrics_listen is not None:
        if args.metrics_listen:
            try:
                parse_listen(args.metrics_listen)
            except ValueError as exc:
                raise ConfigError("--metrics-listen", args.metrics_listen, str(exc)) from None
        config = replace(config, metrics=replace(config.metrics, listen=args.metrics_listen))
    return config


def _cmd_run(args: argparse.Namespace) -> int:
    from ipc.logfmt import setup_logging
    from runtime.config import Config, ConfigError
    from runtime.discord_rest import RestError
    from runtime.plan import plan_fleet
    from runtime.supervisor import StartupError, Supervisor

    config = _load(args.config)
    assert isinstance(config, Config)
    try:
        config = _with_overrides(config, args)
    except ConfigError as exc:
        print(f"shardline: {exc}", file=sys.stderr)
        return 2
    setup_logging("supervisor", "-", config.log.level, config.log.format)
    token = config.discord.token()
    if token is None:
        print(
            f"shardline: no token: set {config.discord.token_env} in the environment "
            "(or run `shardline demo` to try shardline without one)",
            file=sys.stderr,
        )
        return 2
    try:
        plan = plan_fleet(config, token)
    except ConfigError as exc:  # a config value is wrong: exit 2, as every config error does
        print(f"shardline: {exc}", file=sys.stderr)
        return 2
    except (RestError, StartupError) as exc:
        print(f"shardline: {exc}", file=sys.stderr)
        return 1
    result: list[int] = []

    async def go(stop: asyncio.Event) -> None:
        supervisor = Supervisor(
            config,
            plan,
            token,
            runtime_dir=config.ipc.resolved_runtime_dir(),
            identify_interval=args.identify_interval,
            progress=lambda line: print(f"shardline: {line}", flush=True),
        )
        result.append(await supervisor.run(stop))

    try:
        _run_until_signal(go)
    except StartupError as exc:
        print(f"shardline: {exc}", file=sys.stderr)
        return 1
    return result[0] if result else 1


def _request(config_path: str, command: Command) -> Reply:
    """Send ``command`` to the supervisor of this config; an error reply or no answer ends
    the CLI with status 1 and the reason on stderr."""
    from ipc.client import CommandError, request_sync
    from runtime.config import Config
    from runtime.curveauth import read_local_key

    config = _load(config_path)
    assert isinstance(config, Config)
    endpoint = _commands_endpoint(config)
    try:
        reply = request_sync(
            endpoint,
            command,
            server_key=config.ipc.curve_public_key or None,
            # A tcp:// supervisor admits the CLI of its own host by the key in its runtime dir.
            client_key=read_local_key(config.ipc.resolved_runtime_dir()),
        )
    except CommandError as exc:
        print(f"shardline: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if isinstance(reply, ErrorReply):
        print(f"shardline: {reply.error}", file=sys.stderr)
        raise SystemExit(1)
    return reply


def _fetch_status(config_path: str) -> object:
    """The fleet status from the supervisor of this config (StatusUnavailable: why not)."""
    from ipc.client import CommandError, request_sync
    from ipc.requests import GetStatus, StatusReply
    from ipc.status import FleetStatus
    from runtime.config import Config
    from runtime.curveauth import read_local_key
    from runtime.statuswatch import StatusUnavailable

    config = _load(config_path)
    assert isinstance(config, Config)
    try:
        reply = request_sync(
            _commands_endpoint(config),
            GetStatus(),
            server_key=config.ipc.curve_public_key or None,
            client_key=read_local_key(config.ipc.resolved_runtime_dir()),
        )
    except CommandError as exc:
        raise StatusUnavailable(str(exc)) from None
    if isinstance(reply, ErrorReply):
        raise StatusUnavailable(reply.error)
    try:
        if not isinstance(reply, StatusReply):
            raise ValueError(f"not a status reply: {reply!r}")
        return FleetStatus.from_json(reply.status)
    except ValueError as exc:
        raise StatusUnavailable(f"unexpected reply from the supervisor ({exc})") from None


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from ipc.status import FleetStatus
    from runtime.statusview import format_status
    from runtime.statuswatch import StatusUnavailable, watch

    if args.watch:
        if args.json:
            print("shardline: --watch draws the table; use --json without it", file=sys.stderr)
            return 2
        if not args.interval > 0:
            print("shardline: --interval must be more than 0 seconds", file=sys.stderr)
            return 2

        def fetch() -> FleetStatus:
            status = _fetch_status(args.config)
            assert isinstance(status, FleetStatus)
            return status

        code = watch(fetch, sys.stdout, interval=args.interval, tty=sys.stdout.isatty())
        with contextlib.suppress(OSError):  # stdout may be a closed pipe by now
            sys.stdout.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return code
    try:
        status = _fetch_status(args.config)
    except StatusUnavailable as exc:
        print(f"shardline: {exc}", file=sys.stderr)
        return 1
    assert isinstance(status, FleetStatus)
    if args.json:
        print(json.dumps(status.to_json()))
        return 0
    print(format_status(status))
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from runtime.curveauth import new_keypair

    public, secret = new_keypair()
    print(f"public  {public}    -> ipc.client_public_keys in the supervisor's config")
    print(f"secret  {secret}    -> SHARDLINE_CLIENT_KEY of the application; keep it secret")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from ipc.requests import StopFleet

    _request(args.config, StopFleet())
    print("shardline: stopping (shards close resumably; sessions are saved)")
    return 0


def _cmd_restart(args: argparse.Namespace) -> int:
    from ipc.requests import RestartShards

    if args.rolling:
        command = RestartShards(rolling=True)
    elif len(args.target) == 2 and args.target[0] == "shard" and args.target[1].isdigit():
        command = RestartShards(shard=int(args.target[1]))
    else:
        print(
            "shardline: use `shardline restart shard N` or `shardline restart --rolling`",
            file=sys.stderr,
        )
        return 2
    reply = _request(args.config, command)
    print(f"shardline: restarting shards {reply.raw.get('restarting')}, each resuming")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from ipc.requests import Deploy, Deploying, GetStatus, StatusReply

    def pids() -> dict[str, int | None]:
        status = _request(args.config, GetStatus())
        assert isinstance(status, StatusReply)
        return {f"{a['module']}[{a['index']}]": a.get("pid") for a in status.status["apps"]}

    before = pids()
    reply = _request(args.config, Deploy())
    assert isinstance(reply, Deploying)
    apps = [str(a) for a in reply.raw.get("apps", [])]
    print(f"shardline: deploying {len(apps)} application processes, one at a time", flush=True)
    deadline = time.monotonic() + args.timeout * max(1, len(apps))
    shown = -1
    while True:
        now = pids()
        replaced = [a for a in apps if now.get(a) not in (None, before.get(a))]
        if len(replaced) != shown:
            print(f"shardline: deploy: {len(replaced)} of {len(apps)} replaced", flush=True)
            shown = len(replaced)
        if len(replaced) == len(apps):
            return 0
        if time.monotonic() > deadline:
            left = ", ".join(a for a in apps if a not in replaced)
            print(
                f"shardline: deploy: not replaced in time: {left} (see the supervisor's log)",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.5)


def _cmd_reshard(args: argparse.Namespace) -> int:
    from ipc.requests import GetStatus, Reshard, ReshardPlan, StatusReply

    reply = _request(args.config, Reshard(count=args.count, dry_run=args.dry_run))
    assert isinstance(reply, ReshardPlan)
    plan = reply.raw
    print(
        f"shardline: {plan['current']} -> {plan['target']} shards: {plan['identifies']} "
        f"IDENTIFYs of the {plan['remaining']} Discord allows today; identify bound "
        f"{plan['eta']:.0f}s" + ("" if plan["started"] else " (dry run: nothing started)")
    )
    if not plan["started"]:
        return 0
    shown, started = "", time.monotonic()
    try:
        while True:
            status = _request(args.config, GetStatus())
            assert isinstance(status, StatusReply)
            reshard = status.status.get("reshard") or {}
            eta = max(0.0, float(plan["eta"]) - (time.monotonic() - started))
            line = (
                f"{reshard.get('ready', 0)} shards ready of {reshard.get('target')}, "
                + (f"ETA {eta:.0f}s" if reshard.get("state") == "starting" else "")
                + str(reshard.get("state") if reshard.get("state") != "starting" else "")
            )
            if line != shown:
                print(f"shardline: reshard: {line}", flush=True)
                shown = line
            if reshard.get("state") in ("done", "aborted"):
                if reshard["state"] == "aborted":
                    print(f"shardline: reshard aborted: {reshard.get('problem')}", file=sys.stderr)
                    return 1
                return 0
            time.sleep(1.0)
    except KeyboardInterrupt:
        _request(args.config, Reshard(abort=True))
        print("shardline: reshard called off; the running shards are untouched", file=sys.stderr)
        return 1


def _voice_command(args: argparse.Namespace) -> Command | str:
    """The typed voice command the CLI's words ask for, or what is missing."""
    from ipc import requests as r

    guild = args.guild
    if args.action in ("join", "play", "volume") and not args.arg:
        what = {"join": "a channel id", "play": "a file", "volume": "a number"}[args.action]
        return f"voice {args.action} needs {what}"
    try:
        if args.action == "join":
            return r.JoinVoice(guild_id=guild, channel_id=int(args.arg))
        if args.action == "play":
            return r.PlayAudio(guild_id=guild, path=os.path.abspath(args.arg), queue=args.queue)
        if args.action == "volume":
            return r.SetVolume(guild_id=guild, volume=float(args.arg))
    except ValueError:
        return f"voice {args.action}: {args.arg!r} is not a number"
    if args.action == "record":
        return r.Record(guild_id=guild, stop=args.stop)
    simple: dict[str, type[r.VoiceRequest]] = {
        "leave": r.LeaveVoice,
        "stop": r.StopAudio,
        "pause": r.PauseAudio,
        "resume": r.ResumeAudio,
    }
    return simple[args.action](guild_id=guild)


def _cmd_voice(args: argparse.Namespace) -> int:
    command = _voice_command(args)
    if isinstance(command, str):
        print(f"shardline: {command}", file=sys.stderr)
        return 2
    reply = _request(args.config, command)
    print(f"shardline: voice {args.action} routed to {reply.raw.get('routed')}")
    if reply.raw.get("directory"):
        print(f"shardline: recording to {reply.raw['directory']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from runtime.demo import run_demo

    result: list[int] = []

    async def go(stop: asyncio.Event) -> None:
        result.append(
            await run_demo(
                stop, guilds=args.guilds, shards=args.shards, message_every=args.message_every
            )
        )

    _run_until_signal(go)
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
