"""The ``shardline`` command line."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

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

    demo = sub.add_parser(
        "demo",
        help="run shardline against the embedded emulator (no token needed) until Ctrl-C",
        description=(
            "Start the emulator in this process and a shard process connected to it, inject a "
            "message every few seconds, and print the events that reach the event bus. "
            "Ctrl-C stops the shard (it closes resumably) and then everything else."
        ),
    )
    demo.add_argument("--guilds", type=int, default=12, help="guilds in the emulator (default 12)")
    demo.add_argument(
        "--message-every",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="inject a MESSAGE_CREATE this often (default 2)",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        code = 130
    return code


def _run_until_signal(coro_factory: object) -> None:
    """Run ``coro_factory(stop_event)`` until SIGINT/SIGTERM sets the event."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await coro_factory(stop)  # type: ignore[operator]

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


def _cmd_demo(args: argparse.Namespace) -> int:
    from runtime.demo import run_demo

    result: list[int] = []

    async def go(stop: asyncio.Event) -> None:
        result.append(await run_demo(stop, guilds=args.guilds, message_every=args.message_every))

    _run_until_signal(go)
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
