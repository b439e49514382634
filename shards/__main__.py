"""``python -m shards``: one gateway shard as a process (normally started by the supervisor).

The token comes from the environment (never the command line, where ``ps`` would show it).
Exit status: 0 stopped (SIGTERM/shutdown), 3 a fatal close code (do not respawn), 1 a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import ssl
import sys
from dataclasses import dataclass

import orjson

from ipc import eventloop
from ipc.control import MAX_SESSION_ID_LENGTH, gateway_url_problem
from ipc.fields import check_snowflake
from ipc.intents import UnknownIntentError, intents_from_names
from ipc.logfmt import setup_logging
from shards import tls
from shards.inflate import DEFAULT_MAX_PAYLOAD
from shards.links import ControlLink, EventPublisher, NullPublisher
from shards.links import shutdown as shutdown_links
from shards.loop import LocalIdentifyBucket, ShardRunner
from shards.protocol import ShardSettings, ShardState

EXIT_STOPPED = 0
EXIT_CRASH = 1
EXIT_USAGE = 2
EXIT_FATAL = 3

log = logging.getLogger("shardline.shard")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m shards",
        description="Run one Discord gateway shard. The token is read from the environment "
        "variable named by --token-env. Exit status: 0 stopped, 3 fatal close code, 1 crash.",
    )
    p.add_argument("--shard-id", type=int, required=True)
    p.add_argument("--shard-count", type=int, required=True)
    p.add_argument(
        "--gateway", required=True, help="gateway base URL, e.g. wss://gateway.discord.gg"
    )
    p.add_argument("--token-env", default="DISCORD_TOKEN", help="variable holding the token")
    p.add_argument(
        "--intents",
        default="guilds,guild_messages,guild_voice_states",
        help="comma-separated intent names, or a number (default: %(default)s)",
    )
    p.add_argument(
        "--compression", default="zlib-stream", choices=["zlib-stream", "zstd-stream", "none"]
    )
    p.add_argument("--large-threshold", type=int, default=250)
    p.add_argument(
        "--max-payload-bytes",
        type=int,
        default=DEFAULT_MAX_PAYLOAD,
        help="refuse (and reconnect) a gateway payload that inflates past this many bytes "
        "(default %(default)s)",
    )
    p.add_argument(
        "--max-identifies-per-hour",
        type=int,
        default=10,
        help="identifies this shard may send in any hour, at most (default %(default)s)",
    )
    p.add_argument(
        "--events", help="event bus endpoint to publish to (XSUB side); none: publish nowhere"
    )
    p.add_argument("--control", help="supervisor control endpoint (ROUTER); none: standalone")
    p.add_argument(
        "--resume",
        metavar="JSON",
        help='checkpoint to resume: {"session_id": ..., "seq": ..., "resume_url": ...}',
    )
    p.add_argument(
        "--identify-interval",
        type=float,
        default=5.0,
        help="standalone only: seconds between identifies (default 5)",
    )
    p.add_argument("--backoff-base", type=float, default=1.0, help="first reconnect delay (s)")
    p.add_argument("--ca-file", help="extra CA bundle (PEM) to trust for wss://")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    return p


@functools.cache
def shared_parser() -> argparse.ArgumentParser:
    """One parser per process: parse_args leaves it as it was, and the zygote parses a
    command line per shard it forks (it builds this one before it freezes its heap)."""
    return build_parser()


def parse_resume(text: str) -> tuple[str, int, str, int, str] | str:
    """``--resume``'s checkpoint as (session_id, seq, resume_url, guilds, user_id), or what is
    wrong with it: the token will be sent to that URL, so it is checked like any outside
    input."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(data, dict):
        return "not a JSON object"
    session_id, seq = data.get("session_id"), data.get("seq")
    url, guilds = data.get("resume_url"), data.get("guilds", 0)
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID_LENGTH:
        return "session_id is not a short non-empty string"
    if type(seq) is not int or not 0 <= seq < 2**63:
        return "seq is not a non-negative integer"
    problem = gateway_url_problem(url)
    if problem is not None:
        return f"resume_url {problem}"
    if type(guilds) is not int or guilds < 0:
        return "guilds is not a non-negative integer"
    user_id = data.get("user_id") or ""
    if not isinstance(user_id, str) or (user_id and check_snowflake(user_id) is not None):
        return "user_id is not a snowflake"
    assert isinstance(url, str)
    return session_id, seq, url, guilds, user_id


def parse_intents(text: str) -> int:
    if text.strip().isdigit():
        return int(text)
    return intents_from_names(n for n in text.split(",") if n.strip())


async def amain(args: argparse.Namespace, context: ssl.SSLContext | None = None) -> int:
    token = os.environ.get(args.token_env)
    if not token:
        log.error(f"no token: set the {args.token_env} environment variable")
        return EXIT_USAGE
    settings = ShardSettings(
        token=token,
        shard_id=args.shard_id,
        shard_count=args.shard_count,
        intents=parse_intents(args.intents),
        compression=args.compression,
        large_threshold=args.large_threshold,
        max_payload_bytes=args.max_payload_bytes,
        max_identifies_per_hour=args.max_identifies_per_hour,
        backoff_base=args.backoff_base,
    )
    source = f"shard:{args.shard_id}"
    publisher = EventPublisher(args.events, source) if args.events else NullPublisher(source)
    control = ControlLink(args.control, source) if args.control else None
    runner = ShardRunner(
        settings,
        args.gateway,
        publisher=publisher,
        control=control,
        ssl_context=context,
        identify_bucket=LocalIdentifyBucket(args.identify_interval),
    )
    if args.resume:
        resume = parse_resume(args.resume)
        if isinstance(resume, str):
            log.warning(f"--resume refused ({resume}); identifying afresh")
        else:
            runner.protocol.restore(*resume)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    if args.events and not await publisher.wait_subscribed(timeout=30.0):
        log.error(f"the event bus at {args.events} never subscribed; is the supervisor running?")
        return EXIT_CRASH
    try:
        state = await runner.run()
    finally:
        publisher.close()
        if control is not None:
            control.close()
        shutdown_links()
    return EXIT_FATAL if state is ShardState.FATAL else EXIT_STOPPED


@dataclass(frozen=True, slots=True)
class Prepared:
    """A shard ready to run: its options, and the TLS context for ``--ca-file`` (or why
    that file could not be used)."""

    args: argparse.Namespace
    tls: ssl.SSLContext | None = None
    tls_error: str | None = None


def tag_logging(args: argparse.Namespace) -> None:
    """Log as this shard (``kind=shard id=N``), at its level and in its format."""
    setup_logging("shard", str(args.shard_id), args.log_level, args.log_format)


def prepare(argv: list[str] | None = None) -> Prepared:
    """What a shard does before its loop: parse the command line (``SystemExit`` on a usage
    error, as argparse does), set up logging and load the TLS context it will use. The zygote
    runs this before it forks, so that the work and what it builds stay in shared pages."""
    args = shared_parser().parse_args(argv)
    tag_logging(args)
    if not args.ca_file:
        return Prepared(args)
    try:
        return Prepared(args, tls=tls.client_context(args.ca_file))
    except (OSError, ssl.SSLError) as exc:
        return Prepared(args, tls_error=f"cannot use --ca-file {args.ca_file}: {exc}")


def run(shard: Prepared) -> int:
    """Run the shard that :func:`prepare` set up; returns the exit status."""
    if shard.tls_error is not None:
        log.error(shard.tls_error)
        return EXIT_USAGE
    try:
        parse_intents(shard.args.intents)
    except UnknownIntentError as exc:
        log.error(str(exc))
        return EXIT_USAGE
    try:
        return eventloop.run(amain(shard.args, shard.tls))
    except Exception:
        log.exception("shard crashed")
        return EXIT_CRASH


def main(argv: list[str] | None = None) -> int:
    return run(prepare(argv))


if __name__ == "__main__":
    sys.exit(main())
