"""The shard manager's decisions with fake processes: respawn with backoff, give up, a fatal
close's advice, hang detection, restarts, and what shards report. No real process starts."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from ipc.checkpoint import Checkpoint
from ipc.control import IdentifyPermit, IdentifyRequest, ShardStatus, Shutdown
from ipc.errors import FatalClose
from ipc.exits import ExitStatus
from ipc.messages import Message
from ipc.states import ShardState
from ipc.workerargs import ShardArgs
from runtime.config import parse_config
from runtime.scheduler import IdentifyScheduler
from runtime.sessions import SessionStore
from runtime.shardfleet import ShardFleet
from tests.shards.helpers import eventually


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.signals: list[int] = []

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._done.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self.exit(-sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class FakeSpawner:
    def __init__(self) -> None:
        self.spawned: list[tuple[ShardArgs, FakeProcess]] = []

    async def spawn(self, argv: list[str], env: dict[str, str]) -> FakeProcess:
        proc = FakeProcess(1000 + len(self.spawned))
        self.spawned.append((ShardArgs.from_argv(argv), proc))
        return proc

    async def close(self) -> None:
        pass


def make(
    tmp_path: Any, manual_shutdown: bool = False, **restart: Any
) -> tuple[ShardFleet, FakeSpawner, list[Any], list[str]]:
    config = parse_config(
        {
            "restart": {"backoff_initial": 0.01, "backoff_max": 0.05, **restart},
            "discord": {"token_env": "MY_TOKEN"},
        }
    )
    spawner = FakeSpawner()
    sent: list[tuple[str, Message]] = []
    stopped: list[str] = []

    def send(identity: str, message: Message) -> None:
        sent.append((identity, message))
        if isinstance(message, Shutdown) and not manual_shutdown:  # a shard that obeys
            for args, proc in spawner.spawned:
                if f"shard:{args.shard_id}" == identity:
                    proc.exit(0)

    fleet = ShardFleet(
        config,
        (0, 1),
        2,
        "wss://gateway.example",
        token="secret",
        scheduler=IdentifyScheduler(1, 100, 0.0),
        sessions=SessionStore(tmp_path / "sessions.json"),
        spawner=spawner,  # type: ignore[arg-type]
        send=send,
        stop_fleet=stopped.append,
        bus_in="ipc:///tmp/bus",
        control="ipc:///tmp/control",
    )
    return fleet, spawner, sent, stopped


async def test_a_crashing_shard_is_respawned_then_given_up(tmp_path: Any) -> None:
    fleet, spawner, _, stopped = make(tmp_path, max_restarts=2)
    worker = fleet.workers[0]
    task = asyncio.create_task(fleet.keep_alive(worker))
    for n in range(3):
        await eventually(lambda n=n: len(spawner.spawned) == n + 1)  # type: ignore[misc]
        spawner.spawned[-1][1].exit(1)
    await asyncio.wait_for(task, 5)
    assert worker.restarts == 2 and worker.state is ShardState.FATAL
    assert "restart.max_restarts (2)" in worker.fatal and stopped == []  # the fleet runs on
    args = spawner.spawned[0][0]
    assert (args.shard_id, args.shard_count, args.token_env) == (0, 2, "MY_TOKEN")


async def test_a_fatal_close_stops_the_fleet_with_the_shards_advice(tmp_path: Any) -> None:
    fleet, spawner, _, stopped = make(tmp_path)
    worker = fleet.workers[1]
    task = asyncio.create_task(fleet.keep_alive(worker))
    await eventually(lambda: len(spawner.spawned) == 1)
    fleet.on_control(1, FatalClose(message="4014: disallowed intents", source="shard:1"))
    spawner.spawned[0][1].exit(ExitStatus.FATAL)
    await asyncio.wait_for(task, 5)
    assert stopped == ["shard 1: 4014: disallowed intents"]
    assert worker.state is ShardState.FATAL and len(spawner.spawned) == 1


async def test_a_restart_replaces_the_process_and_resumes_its_checkpoint(tmp_path: Any) -> None:
    fleet, spawner, sent, _ = make(tmp_path, manual_shutdown=True)
    worker = fleet.workers[0]
    task = asyncio.create_task(fleet.keep_alive(worker))
    await eventually(lambda: len(spawner.spawned) == 1)
    assert spawner.spawned[0][0].resume is None
    fleet.sessions.put(Checkpoint(0, 2, "sess", 7, "wss://resume.example"))
    restart = asyncio.create_task(fleet.restart_shard(0))
    await eventually(lambda: ("shard:0", Shutdown()) in sent)
    spawner.spawned[0][1].exit(0)
    await eventually(lambda: len(spawner.spawned) == 2)
    resume = spawner.spawned[1][0].resume
    assert resume is not None and '"session_id":"sess"' in resume
    fleet.on_control(0, ShardStatus(shard=0, state="ready"))
    await asyncio.wait_for(restart, 5)
    assert worker.restarts == 1 and worker.state is ShardState.READY
    spawner.spawned[1][1].exit(0)  # (this fake shard would otherwise ignore the shutdown)
    await fleet.shutdown()
    await asyncio.wait_for(task, 5)


async def test_a_silent_shard_is_killed_and_identify_permits_are_sent(tmp_path: Any) -> None:
    fleet, spawner, sent, _ = make(tmp_path, hang_timeout=30.0)
    task = asyncio.create_task(fleet.keep_alive(fleet.workers[0]))
    await eventually(lambda: len(spawner.spawned) == 1)
    worker, proc = fleet.workers[0], spawner.spawned[0][1]
    fleet.scheduler.expect([0], 0.0)
    fleet.on_control(0, IdentifyRequest(shard=0))
    fleet.tick(worker.last_status_at + 10)
    assert ("shard:0", IdentifyPermit()) in sent and proc.signals == []
    fleet.tick(worker.last_status_at + 31)
    assert proc.signals == [signal.SIGKILL]
    await eventually(lambda: len(spawner.spawned) == 2)  # respawned after its backoff
    assert worker.last_exit == "killed by signal 9"
    await fleet.shutdown()
    await asyncio.wait_for(task, 5)


async def test_bad_reports_do_not_break_status(tmp_path: Any) -> None:
    fleet, spawner, _, _ = make(tmp_path)
    task = asyncio.create_task(fleet.keep_alive(fleet.workers[0]))
    await eventually(lambda: len(spawner.spawned) == 1)
    bogus = ShardStatus.from_raw({"shard": 0, "state": "dancing", "latency_ms": "x"})
    fleet.on_control(0, bogus)
    record = fleet.records(0.0)[0]
    assert (record.state, record.latency, record.guilds) == (ShardState.STARTING, None, 0)
    await fleet.shutdown()
    await asyncio.wait_for(task, 5)
