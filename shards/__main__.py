"""``python -m shards``: one gateway shard as a process (normally started by the supervisor).

The token comes from the environment (never the command line, where ``ps`` would show it).
Exit status: 0 stopped (SIGTERM/shutdown), 3 a fatal close code (do not respawn), 1 a crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from dataclasses import dataclass

from conn import tls
from ipc import eventloop
from ipc.checkpoint import Checkpoint, CheckpointError
from ipc.exits import ExitStatus
from ipc.intents import UnknownIntentError, intents_from_names
from ipc.links import ControlLink, EventPublisher, NullPublisher
from ipc.links import shutdown as shutdown_links
from ipc.logfmt import setup_logging
from ipc.workerargs import ShardArgs
from shards.loop import LocalIdentifyBucket, ShardRunner
from shards.protocol import ShardSettings, ShardState

log = logging.getLogger("shardline.shard")


def parse_resume(text: str, args: ShardArgs) -> Checkpoint | str:
    """``--resume``'s checkpoint, or what is wrong with it: the token will be sent to its
    URL, so it is checked like any outside input."""
    try:
        return Checkpoint.from_resume_arg(text, args.shard_id, args.shard_count)
    except CheckpointError as exc:
        return str(exc)


def parse_intents(text: str) -> int:
    if text.strip().isdigit():
        return int(text)
    return intents_from_names(n for n in text.split(",") if n.strip())


async def amain(args: ShardArgs, context: ssl.SSLContext | None = None) -> int:
    token = os.environ.get(args.token_env)
    if not token:
        log.error(f"no token: set the {args.token_env} environment variable")
        return ExitStatus.USAGE
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
        ask_before_resume=args.ask_before_resume,
    )
    source = args.source
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
        resume = parse_resume(args.resume, args)
        if isinstance(resume, str):
            log.warning(f"--resume refused ({resume}); identifying afresh")
        else:
            runner.protocol.restore(
                resume.session_id, resume.seq, resume.resume_url, resume.guilds, resume.user_id
            )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    if args.events and not await publisher.wait_subscribed(timeout=30.0):
        log.error(f"the event bus at {args.events} never subscribed; is the supervisor running?")
        return ExitStatus.CRASH
    try:
        state = await runner.run()
    finally:
        publisher.close()
        if control is not None:
            control.close()
        shutdown_links()
    return ExitStatus.FATAL if state is ShardState.FATAL else ExitStatus.STOPPED


@dataclass(frozen=True, slots=True)
class Prepared:
    """A shard ready to run: its options, and the TLS context for ``--ca-file`` (or why
    that file could not be used)."""

    args: ShardArgs
    tls: ssl.SSLContext | None = None
    tls_error: str | None = None


def tag_logging(args: ShardArgs) -> None:
    """Log as this shard (``kind=shard id=N``), at its level and in its format."""
    setup_logging("shard", str(args.shard_id), args.log_level, args.log_format)


def prepare(argv: list[str] | None = None) -> Prepared:
    """What a shard does before its loop: parse the command line (``SystemExit`` on a usage
    error, as argparse does), set up logging and load the TLS context it will use. The zygote
    runs this before it forks, so that the work and what it builds stay in shared pages."""
    args = ShardArgs.from_argv(argv)
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
        return ExitStatus.USAGE
    try:
        parse_intents(shard.args.intents)
    except UnknownIntentError as exc:
        log.error(str(exc))
        return ExitStatus.USAGE
    try:
        return eventloop.run(amain(shard.args, shard.tls))
    except Exception:
        log.exception("shard crashed")
        return ExitStatus.CRASH


def main(argv: list[str] | None = None) -> int:
    return run(prepare(argv))


if __name__ == "__main__":
    sys.exit(main())
