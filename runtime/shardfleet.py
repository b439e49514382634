"""The shard processes of one supervisor: spawn each, watch it, respawn it as
:mod:`runtime.restartpolicy` decides, kill it when hung, replace it on a restart, and take in
what it reports on the control socket (status, identify requests, checkpoints, fatal advice).
Every task it starts is its own (``run`` holds them in a TaskGroup)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ipc.checkpoint import Checkpoint, CheckpointError
from ipc.control import (
    IdentifyPermit,
    IdentifyRequest,
    IdentifySent,
    ResumePermit,
    ResumeRequest,
    SessionCheckpoint,
    ShardStatus,
    Shutdown,
    WorkerHello,
)
from ipc.errors import FatalClose
from ipc.exits import ExitStatus
from ipc.intents import names_from_bits
from ipc.logfmt import about
from ipc.messages import Message
from ipc.states import ShardState
from ipc.status import (
    ShardRecord,
    reported_count,
    reported_int,
    reported_number,
    reported_text,
)
from ipc.workerargs import ShardArgs
from runtime.config import Config
from runtime.procs import end_process
from runtime.restartpolicy import CrashHistory, Exit, is_hung, sleep_unless
from runtime.scheduler import IdentifyScheduler, ScheduleView
from runtime.sessions import SessionStore
from runtime.spawner import ExecSpawner, Process, ZygoteSpawner
from runtime.totals import ShardTotals

__all__ = ["IdentifyGate", "ShardFleet", "ShardWorker"]

log = logging.getLogger("shardline.supervisor")

ADVICE_WAIT = 1.0  # a fatal shard sends its advice just before exiting: wait this long for it
SHUTDOWN_GRACE = 10.0  # all shards to close resumably and checkpoint, then SIGTERM, SIGKILL


class IdentifyGate(Protocol):
    """Where identifies and checkpoints go in a multi-host fleet (the host's coordinator)."""

    def identify_requested(self, shard: int) -> None: ...

    def identify_sent(self, shard: int) -> None: ...

    def checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def resume_requested(self, shard: int) -> None: ...


@dataclass
class ShardWorker:
    shard: int
    proc: Process | None = None
    restarts: int = 0
    history: CrashHistory = field(default_factory=CrashHistory)
    last_exit: str = ""
    started_at: float = 0.0
    last_status_at: float = 0.0
    report: ShardStatus | None = None  # the process's last status report
    totals: ShardTotals = field(default_factory=ShardTotals)  # counts across its processes
    stopping: bool = False
    dropped: bool = False  # no longer this host's shard: its process is not respawned
    fatal: str = ""
    fatal_advice: str = ""  # the shard's FatalClose message, when it sent one
    fatal_code: int | None = None  # and its close code
    respawn_at: float | None = None
    replaced: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def state(self) -> ShardState:
        if self.fatal:
            return ShardState.FATAL
        if self.proc is None:
            return ShardState.RESTARTING if self.respawn_at is not None else ShardState.STOPPED
        if self.report is None:
            return ShardState.STARTING
        try:
            return ShardState(self.report.state)
        except ValueError:
            return ShardState.STARTING

    def record(self, now: float) -> ShardRecord:
        """This shard's line in the fleet status (from its last report, if any)."""
        raw = self.report.raw if self.report is not None else {}
        return ShardRecord(
            id=self.shard,
            state=self.state,
            latency=reported_number(raw.get("latency_ms")),
            seq=reported_int(raw.get("seq")),
            session=reported_text(raw.get("session")),
            guilds=reported_count(raw.get("guilds")),
            events_per_second=reported_number(raw.get("dispatch_rate")) or 0.0,
            restarts=self.restarts,
            last_exit=self.last_exit,
            uptime=round(now - self.started_at, 1) if self.proc else 0.0,
            pid=self.proc.pid if self.proc else None,
            dropped=reported_count(raw.get("dropped")),
        )


class ShardFleet:
    def __init__(
        self,
        config: Config,
        shard_ids: tuple[int, ...],
        shard_count: int,
        gateway_url: str,
        *,
        token: str,
        scheduler: IdentifyScheduler | ScheduleView,
        sessions: SessionStore,
        spawner: ZygoteSpawner | ExecSpawner,
        send: Callable[[str, Message], None],
        stop_fleet: Callable[[str], None],
        bus_in: str,
        control: str,
    ) -> None:
        self.config = config
        self.shard_count = shard_count
        self.gateway_url = gateway_url
        self.token = token
        self.scheduler = scheduler
        self.sessions = sessions
        self.spawner = spawner
        self.send = send
        self.stop_fleet = stop_fleet
        self.bus_in = bus_in
        self.control = control
        self.workers = {i: ShardWorker(i) for i in shard_ids}
        self.stopping = asyncio.Event()  # the fleet is stopping: nothing is respawned
        # In a multi-host fleet (runtime/cluster): identifies and checkpoints go through the
        # host's coordinator, and shards come and go as leases are taken and lost.
        self.identify_gate: IdentifyGate | None = None

    # -- one shard's life ---------------------------------------------------------------

    def args_for(self, shard: int) -> ShardArgs:
        """The command line of shard ``shard``: it resumes its last checkpoint if any."""
        cfg = self.config
        checkpoint = self.sessions.get(shard)
        return ShardArgs(
            shard_id=shard,
            shard_count=self.shard_count,
            gateway=self.gateway_url,
            events=self.bus_in,
            control=self.control,
            intents=",".join(names_from_bits(cfg.shards.intents)) or str(cfg.shards.intents),
            compression=cfg.shards.compression,
            large_threshold=cfg.shards.large_threshold,
            max_payload_bytes=cfg.shards.max_payload_bytes,
            max_identifies_per_hour=cfg.shards.max_identifies_per_hour,
            token_env=cfg.discord.token_env,
            log_level=cfg.log.level,
            log_format=cfg.log.format,
            ca_file=cfg.discord.ca_file or None,
            resume=None if checkpoint is None else checkpoint.resume_arg(),
            ask_before_resume=self.identify_gate is not None,
        )

    async def _spawn(self, worker: ShardWorker) -> Process:
        env = {**os.environ, self.config.discord.token_env: self.token}
        # Its own session: a Ctrl-C at the terminal reaches the supervisor only, which then
        # shuts the shards down in order; PDEATHSIG still ends a shard if we die.
        proc = await self.spawner.spawn(self.args_for(worker.shard).to_argv(), env)
        worker.proc = proc
        worker.started_at = worker.last_status_at = time.monotonic()
        worker.report = None
        worker.respawn_at = None
        return proc

    async def keep_alive(self, worker: ShardWorker) -> None:
        """Spawn the shard, and respawn it as the restart policy says until it stops, turns
        fatal, is given up on, or is no longer this host's."""
        restart = self.config.restart
        while not self.stopping.is_set() and not worker.fatal and not worker.dropped:
            proc = await self._spawn(worker)
            code = await proc.wait()
            worker.proc = None
            self.scheduler.cancel(worker.shard)
            if worker.dropped:
                worker.replaced.set()
                return
            now = time.monotonic()
            asked = worker.stopping or self.stopping.is_set()
            if code == ExitStatus.FATAL and not asked:
                await self._wait_for_advice(worker)
            decision = worker.history.after_exit(
                code,
                asked_to_stop=asked,
                ran_for=now - worker.started_at,
                now=now,
                restart=restart,
                advice=worker.fatal_advice,
            )
            worker.last_exit = decision.last_exit
            if decision.next is Exit.STOPPED:
                worker.replaced.set()
                if worker.stopping and not self.stopping.is_set():
                    worker.stopping = False  # a restart: go round again at once
                    worker.restarts += 1
                    continue
                return
            if decision.next is Exit.FATAL:
                worker.fatal = decision.reason
                self.stop_fleet(f"shard {worker.shard}: {worker.fatal}")
                return
            if decision.next is Exit.GIVE_UP:
                worker.fatal = decision.reason
                log.error(
                    f"shard {worker.shard} {decision.reason}", extra=about(shard=worker.shard)
                )
                return
            worker.restarts += 1
            worker.respawn_at = now + decision.delay
            log.warning(
                f"shard {worker.shard} {worker.last_exit}; respawning in {decision.delay:.1f}s",
                extra={"fields": {"shard": str(worker.shard), "restarts": worker.restarts}},
            )
            await sleep_unless(self.stopping, decision.delay)

    async def _wait_for_advice(self, worker: ShardWorker) -> None:
        """A shard that exits fatal sends its FatalClose just before: it may still be on
        its way through the control socket."""
        deadline = time.monotonic() + ADVICE_WAIT
        while not worker.fatal_advice and time.monotonic() < deadline:
            await asyncio.sleep(0.025)

    # -- a multi-host fleet: shards taken and lost ---------------------------------------

    def add(self, shard: int, checkpoint: Checkpoint | None) -> ShardWorker:
        """This host now holds ``shard``: a worker for it, starting from ``checkpoint``
        (RESUME) or afresh (IDENTIFY). The caller runs :meth:`keep_alive` for it."""
        if checkpoint is not None:
            self.sessions.put(checkpoint)
        else:
            self.sessions.forget(shard)
        worker = self.workers[shard] = ShardWorker(shard)
        return worker

    def drop(self, shard: int) -> None:
        """Another host holds ``shard`` now: end its process at once (SIGKILL, so it sends
        nothing more) and never respawn it."""
        worker = self.workers.pop(shard, None)
        if worker is None:
            return
        worker.dropped = True
        self.scheduler.cancel(shard)
        self.sessions.forget(shard)
        if worker.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()

    async def hand_over(self, shard: int, timeout: float = SHUTDOWN_GRACE) -> Checkpoint | None:
        """Close ``shard`` resumably and return its final checkpoint, for another host to
        RESUME; the process is not respawned."""
        worker = self.workers.get(shard)
        if worker is None:
            return None
        worker.dropped = True
        proc = worker.proc
        if proc is not None:
            worker.replaced.clear()
            self.send(f"shard:{shard}", Shutdown())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.replaced.wait(), timeout)
            if worker.proc is not None:
                await end_process(worker.proc, grace=3.0)
        self.workers.pop(shard, None)
        checkpoint = self.sessions.get(shard)
        self.sessions.forget(shard)
        return checkpoint

    # -- what the supervisor asks -------------------------------------------------------

    async def restart_shard(self, shard: int) -> None:
        """Replace one shard process; the new one resumes from the last checkpoint."""
        worker = self.workers[shard]
        if worker.proc is None:
            return
        worker.replaced.clear()
        worker.stopping = True
        self.send(f"shard:{shard}", Shutdown())
        await worker.replaced.wait()
        await self._wait_ready(worker)

    async def rolling_restart(self) -> None:
        """Replace every shard process, one at a time, each resuming. The new ones run the
        code on disk now (a new shardline version): with ``spawn = "fork"`` they fork from a
        fresh zygote, and the old zygote ends once its last shard was replaced."""
        await self.spawner.renew()
        for shard in sorted(self.workers):
            await self.restart_shard(shard)
        await self.spawner.close_retired()  # (on an error, it ends with the fleet instead)

    async def _wait_ready(self, worker: ShardWorker, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                worker.proc is not None
                and worker.state is ShardState.READY
                and worker.last_status_at > worker.started_at
            ):
                return
            await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
        """Every shard closes resumably and checkpoints (``Shutdown``), then whatever is
        left after the grace period is ended."""
        self.stopping.set()
        workers = list(self.workers.values())  # (a lease taken meanwhile starts nothing)
        for worker in workers:
            worker.stopping = True
            self.send(f"shard:{worker.shard}", Shutdown())
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for worker in workers:
            proc = worker.proc
            if proc is None:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), max(0.1, deadline - time.monotonic()))
            await end_process(proc, grace=3.0)
        await self.spawner.close()

    # -- what the shards say ------------------------------------------------------------

    def on_control(self, shard: int, message: Message) -> None:
        worker = self.workers.get(shard)
        if worker is None:
            return
        now = time.monotonic()
        gate = self.identify_gate
        if isinstance(message, ResumeRequest):
            if gate is not None:
                gate.resume_requested(shard)
            else:  # a single host: nobody else can hold the shard
                self.send(f"shard:{shard}", ResumePermit())
            return
        if gate is not None and isinstance(message, IdentifyRequest | IdentifySent):
            if isinstance(message, IdentifyRequest):
                gate.identify_requested(shard)
            else:
                gate.identify_sent(shard)
            return
        if isinstance(message, ShardStatus):
            worker.report = message
            worker.last_status_at = now
            if worker.proc is not None:
                worker.totals.add(worker.proc.pid, message)
        elif isinstance(message, IdentifyRequest):
            self.scheduler.request(shard)
        elif isinstance(message, IdentifySent):
            self.scheduler.sent(shard, now)
        elif isinstance(message, SessionCheckpoint):
            try:
                checkpoint = Checkpoint.from_event(message, self.shard_count, time.time())
            except CheckpointError as exc:
                log.warning(
                    f"shard {shard} sent an unusable checkpoint ({exc}); not kept",
                    extra=about(shard=shard),
                )
                return
            if checkpoint.shard == shard:
                self.sessions.put(checkpoint)
                if gate is not None:
                    gate.checkpoint(checkpoint)
        elif isinstance(message, WorkerHello):
            worker.last_status_at = now
        elif isinstance(message, FatalClose):
            advice = message.raw.get("message") if isinstance(message.raw, dict) else None
            worker.fatal_advice = advice[:1000] if isinstance(advice, str) else ""
            code = message.raw.get("code") if isinstance(message.raw, dict) else None
            worker.fatal_code = code if type(code) is int else None

    def tick(self, now: float) -> None:
        """Identify permits that are due, and hung shards killed (the respawn follows)."""
        for shard in self.scheduler.poll(now):
            self.send(f"shard:{shard}", IdentifyPermit())
        hang = self.config.restart.hang_timeout
        for worker in self.workers.values():
            proc = worker.proc
            if proc is not None and proc.returncode is None:
                if is_hung(worker.last_status_at, now, hang):
                    log.warning(
                        f"shard {worker.shard} sent no status for {hang:.0f}s: killing it",
                        extra=about(shard=worker.shard),
                    )
                    worker.last_exit = "hung (no status)"
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    worker.last_status_at = now

    # -- what status shows --------------------------------------------------------------

    def ready(self, shard: int) -> bool:
        worker = self.workers.get(shard)
        return worker is not None and worker.state is ShardState.READY

    def state_of(self, shard: int) -> ShardState | None:
        worker = self.workers.get(shard)
        return None if worker is None else worker.state

    def records(self, now: float) -> list[ShardRecord]:
        return [worker.record(now) for worker in self.workers.values()]
