"""Both ways the supervisor starts a shard, exec and the forking zygote, with a real shard
process: its exit status reaches ``wait()``, a refused environment is a usage error, and
SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from ipc.exits import ExitStatus
from ipc.workerargs import ShardArgs
from runtime.spawner import ExecSpawner, ZygoteSpawner

pytestmark = pytest.mark.slow

ARGS = ShardArgs(
    shard_id=0,
    shard_count=1,
    gateway="ws://127.0.0.1:9",  # nothing listens: the shard keeps backing off
    token_env="TEST_SPAWNER_TOKEN",
)


@pytest.fixture(params=[ExecSpawner, ZygoteSpawner])
def spawner_class(request: pytest.FixtureRequest) -> type[ExecSpawner] | type[ZygoteSpawner]:
    return request.param  # type: ignore[no-any-return]


async def test_a_missing_token_is_a_usage_exit(
    spawner_class: type[ExecSpawner] | type[ZygoteSpawner],
) -> None:
    spawner = spawner_class(sys.executable, lambda: None)
    env = {k: v for k, v in os.environ.items() if k != "TEST_SPAWNER_TOKEN"}
    try:
        proc = await spawner.spawn(ARGS.to_argv(), env)
        assert await asyncio.wait_for(proc.wait(), 30) == ExitStatus.USAGE
    finally:
        await spawner.close()


async def test_sigterm_stops_a_running_shard_cleanly(
    spawner_class: type[ExecSpawner] | type[ZygoteSpawner],
) -> None:
    spawner = spawner_class(sys.executable, lambda: None)
    env = {**os.environ, "TEST_SPAWNER_TOKEN": "t"}
    dialled = asyncio.Event()

    def refuse(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled.set()  # its loop runs (its signal handlers are in place): hang up
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    args = ARGS.replace(gateway=f"ws://127.0.0.1:{port}", backoff_base=0.05)
    try:
        proc = await spawner.spawn(args.to_argv(), env)
        assert proc.returncode is None and proc.pid > 0
        await asyncio.wait_for(dialled.wait(), 30)
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == ExitStatus.STOPPED
    finally:
        server.close()
        await spawner.close()
