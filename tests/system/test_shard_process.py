"""``python -m shards`` as a real process: SIGKILL mid-stream, restart from the last checkpoint
the bus carried, and every dispatch the emulator sent reaches the bus."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from emulator import Emulator, EmulatorConfig, GatewayRules, WorldConfig
from ipc.checkpoint import Checkpoint
from ipc.codec import bus_messages, decode_bus
from ipc.control import SessionCheckpoint
from ipc.workerargs import ShardArgs

pytestmark = pytest.mark.slow


class Bus:
    """A SUB socket bound where the shard publishes; records seqs and checkpoints."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.bind(endpoint)
        self.seqs: list[int] = []
        self.types: list[str] = []
        self.checkpoints: list[SessionCheckpoint] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            for message in bus_messages(list(await self.sock.recv_multipart())):
                envelope, event = decode_bus(message)
                if isinstance(event, SessionCheckpoint):
                    self.checkpoints.append(event)
                elif envelope.kind == "dispatch":
                    assert envelope.seq is not None
                    self.seqs.append(envelope.seq)
                    self.types.append(event.type_name)
            self.changed.set()

    async def wait_for(self, predicate: object, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()

    def close(self) -> None:
        self.task.cancel()
        self.sock.close(linger=0)
        self.ctx.term()


async def start_shard(
    emu: Emulator,
    endpoint: str,
    resume: SessionCheckpoint | None = None,
    token: str | None = None,
) -> asyncio.subprocess.Process:
    args = ShardArgs(
        shard_id=0,
        shard_count=1,
        gateway=emu.gateway_url,
        events=endpoint,
        identify_interval=0.0,
        backoff_base=0.05,
        log_level="warning",
        resume=None
        if resume is None
        else Checkpoint.from_event(resume, 1, time.time()).resume_arg(),
    )
    env = {**os.environ, "DISCORD_TOKEN": token or emu.rules.token}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shards", *args.to_argv(), env=env
    )


@asynccontextmanager
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Emulator, Bus, str]]:
    rules = GatewayRules(identify_interval=0.0)
    async with Emulator(EmulatorConfig(rules=rules, world=WorldConfig(guilds=3))) as emu:
        endpoint = f"ipc://{tmp_path}/events.sock"
        bus = Bus(endpoint)
        try:
            yield emu, bus, endpoint
        finally:
            bus.close()


async def test_sigkill_mid_stream_then_resume_from_checkpoint_loses_nothing(tmp_path: Path) -> None:
    async with setup(tmp_path) as (emu, bus, endpoint):
        proc = await start_shard(emu, endpoint)
        try:
            await bus.wait_for(lambda: "READY" in bus.types and bus.checkpoints)
            stream = emu.stream(0, rate=3000, count=4000)
            await bus.wait_for(lambda: bus.types.count("MESSAGE_CREATE") >= 800)
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
            await stream  # the rest goes into the detached session, for replay
            last = bus.checkpoints[-1]
            before = len(bus.seqs)
            proc = await start_shard(emu, endpoint, resume=last)
            final = emu.sessions(0)[0].seq
            await bus.wait_for(lambda: set(range(1, final + 1)) <= set(bus.seqs), timeout=30)
            assert "RESUMED" in bus.types[before:]
            assert [r.outcome for r in emu.gateway.identifies] == ["ready"]  # one identify only
            assert max(bus.seqs) >= final
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()


async def test_sigterm_closes_resumably_and_the_next_process_resumes(tmp_path: Path) -> None:
    async with setup(tmp_path) as (emu, bus, endpoint):
        proc = await start_shard(emu, endpoint)
        try:
            await bus.wait_for(lambda: bus.types.count("GUILD_CREATE") == 3)
        finally:
            proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
        final = bus.checkpoints[-1]
        assert final.seq == max(bus.seqs)  # the last checkpoint covers everything published
        closes = [c for c in emu.gateway.connections]
        assert closes == []  # the connection is gone, closed by the shard
        assert not emu.sessions(0)[0].invalid  # closed with a resumable code
        await emu.message(emu.world.guild_ids[0], "while nobody was connected")
        proc = await start_shard(emu, endpoint, resume=final)
        try:
            await bus.wait_for(lambda: "RESUMED" in bus.types)
            assert "MESSAGE_CREATE" in bus.types
            assert len(emu.gateway.identifies) == 1
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0


async def test_fatal_close_exits_with_status_3(tmp_path: Path) -> None:
    async with setup(tmp_path) as (emu, _bus, endpoint):
        proc = await start_shard(emu, endpoint, token="not-the-token")  # 4004
        try:
            assert await asyncio.wait_for(proc.wait(), 20) == 3
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
