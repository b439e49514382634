"""``python -m shards.zygote``: a fork server for shard processes.

It imports everything a shard needs once, freezes those objects out of the garbage
collector, and then forks a shard for each request. Forked shards share the preloaded pages
with the zygote and each other, which a thousand-shard host pays for once instead of per
process, and they start in milliseconds instead of importing for a quarter of a second each
(``bench/memory.py`` and ``bench/startup.py`` measure both).

It parses each request's command line and sets up logging and TLS before forking
(``shards.__main__.prepare``), so that a shard only runs its loop. Every page the zygote
writes after a fork stays behind as that shard's private copy, so its work between forks is
paid by every shard: it prepares every request that has arrived before it forks any.

Protocol on stdin/stdout, one JSON object per line:
  request  {"id": N, "argv": [...], "env": {...}, "unset": [...]}
           fork ``python -m shards ARGV`` in the zygote's own environment (the one it was
           started with) with ENV's variables set over it and UNSET's names removed; a
           supervisor sends only what differs, because rewriting a whole environment in
           each child costs that child 0.3 MB of copied pages
  reply    {"id": N, "pid": P}                      it runs
  event    {"exit": P, "status": S}                 it ended (S as in ``Popen.returncode``)
The zygote ends when stdin closes (its supervisor is gone), and takes its children with it.
"""

from __future__ import annotations

# ...and what a shard loads later, on first use: loading it here keeps it shared too.
import contextlib
import ctypes  # prctl below, and a shard's memory trim later
import gc
import os
import select
import signal
import sys
from dataclasses import dataclass
from typing import Any

import orjson
import zmq
import zmq.asyncio

# What every shard imports: loaded here once, shared by every fork.
import shards.__main__ as shard_main
import shards.inflate
import shards.loop  # noqa: F401
from conn import tls
from ipc.workerargs import ShardArgs

try:
    import uvloop  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:  # zstd-stream shards
    from backports import zstd  # noqa: F401
except ImportError:  # pragma: no cover
    pass


def _warm_up() -> None:
    """Run once what every shard runs first: its argument parser, an event loop, and a
    ZeroMQ context with the sockets a shard opens. What they initialise on first use
    (argparse's lazy imports, uvloop's module data, libzmq's and libsodium's globals) then
    lives in pages the forks share instead of copying into each (bench/memory.py: 8.6 ->
    7.6 MB PSS per shard at 64). Nothing of it stays alive: the context is terminated, so
    no ZeroMQ thread exists when the zygote forks."""
    import asyncio

    async def tick() -> None:
        await asyncio.sleep(0)

    loops: list[Any] = [asyncio.new_event_loop]
    with contextlib.suppress(ImportError):
        import uvloop

        loops.append(uvloop.new_event_loop)
    for new_loop in loops:
        loop = new_loop()
        try:
            loop.run_until_complete(tick())
        finally:
            loop.close()
    ShardArgs.parser().format_help()  # argparse imports shutil (lzma, bz2) lazily
    tls.client_context()  # the system CA store, loaded once for every wss:// shard
    ctx = zmq.Context()
    try:
        for kind in (zmq.XPUB, zmq.DEALER):
            sock = ctx.socket(kind)
            sock.close(linger=0)
    finally:
        ctx.term()


def _send(obj: dict[str, Any]) -> None:
    os.write(1, orjson.dumps(obj) + b"\n")


def _child(shard: shard_main.Prepared | int, env: dict[str, str], unset: list[str]) -> None:
    """In the forked child: become the shard the zygote prepared (or exit with the status
    its command line earned: argparse has already said why on stderr)."""
    try:
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        for name in unset:
            os.environ.pop(name, None)
        if env:
            os.environ.update(env)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(2, 1)  # our stdout is the zygote's reply channel: shards log to stderr
        signal.set_wakeup_fd(-1)
        code = shard if isinstance(shard, int) else shard_main.run(shard)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        code = 1
    os._exit(code)


def _prepare(argv: list[str]) -> shard_main.Prepared | int:
    """Parse, set up logging and load TLS here, before forking: a shard that did it after
    the fork would copy every page that work touches (its own TLS context alone cost a
    forked shard 2.2 MB). What this touches is copied into each fork too, so it stays small:
    one parser, one log handler, cached TLS contexts."""
    sys.argv = ["python -m shards", *argv]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # our stdout carries replies: no --help there
            return shard_main.prepare(argv)
    except SystemExit as exc:  # a usage error: the child exits with argparse's status
        return exc.code if isinstance(exc.code, int) else 2


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").prctl
    except (OSError, AttributeError):
        return None


# Looked up once, here: a CDLL built in each child (a class and its objects) cost 0.15 MB.
_PRCTL = _find_prctl()


def _die_with_parent() -> None:
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _send({"exit": pid, "status": code})


def main() -> int:
    _die_with_parent()
    _warm_up()  # before the wakeup fd below: event loops install their own while they run
    # Single-threaded on purpose (a fork copies only the calling thread): SIGCHLD wakes the
    # same select() that reads requests, through a wakeup pipe.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    gc.collect()
    gc.freeze()  # preloaded objects are never touched by the collector: pages stay shared
    stdin = sys.stdin.fileno()
    pending = b""
    while True:
        try:
            ready, _, _ = select.select([stdin, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap()
        if stdin not in ready:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            break  # the supervisor is gone
        pending += chunk
        *lines, pending = pending.split(b"\n")
        children.update(_handle([line for line in lines if line.strip()]))
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return 0


@dataclass
class _Request:
    id: Any
    shard: shard_main.Prepared | int
    env: dict[str, str]
    unset: list[str]


def _read_request(line: bytes) -> _Request | None:
    """Parse and prepare one request (None, answered with an error, when it is malformed)."""
    try:
        request = orjson.loads(line)
        argv = [str(a) for a in request["argv"]]
        env = {str(k): str(v) for k, v in request.get("env", {}).items()}
        unset = [str(name) for name in request.get("unset", [])]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        _send({"id": None, "error": f"bad request: {exc}"})
        return None
    return _Request(request.get("id"), _prepare(argv), env, unset)


def _handle(lines: list[bytes]) -> list[int]:
    """Fork a shard for each request line; returns their pids. Every request that has arrived
    is prepared before the first of them is forked: what preparing writes (0.3 MB for the
    command line alone) is then shared by the whole batch, where a fork between two
    preparations leaves the earlier shard a private copy of each page the next one writes.
    A supervisor starting its fleet sends all its requests at once."""
    requests = [r for r in map(_read_request, lines) if r is not None]
    gc.freeze()  # what they built is shared from now on: keep the forks' collectors off it
    pids = []
    for request in requests:
        if isinstance(request.shard, shard_main.Prepared):
            shard_main.tag_logging(request.shard.args)  # its own shard id in its log lines
        pid = os.fork()
        if pid == 0:
            _child(request.shard, request.env, request.unset)
        _send({"id": request.id, "pid": pid})
        pids.append(pid)
    return pids


if __name__ == "__main__":
    sys.exit(main())
