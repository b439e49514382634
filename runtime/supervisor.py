"""The supervisor: turns one config into a fleet of shard processes, and keeps it running.

It owns the event bus (XSUB -> XPUB), the control ROUTER the workers talk to, the command
ROUTER applications and the CLI talk to, the identify schedule, the saved sessions, and every
worker process (spawn, watch, respawn with backoff, kill when hung). It never imports a
worker's loop: workers are processes (``python -m shards``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zmq
import zmq.asyncio

from ipc.checkpoint import Checkpoint, CheckpointError
from ipc.codec import (
    MAX_GATEWAY_PAYLOAD,
    CodecError,
    control_to,
    decode_control,
    encode_bus_event,
    encode_gateway_command,
)
from ipc.commands import UpdateVoiceState
from ipc.control import (
    GatewayForward,
    IdentifyPermit,
    IdentifyRequest,
    IdentifySent,
    SessionCheckpoint,
    ShardStatus,
    Shutdown,
    VoiceEnded,
    VoicePause,
    VoicePlay,
    VoiceRecord,
    VoiceResume,
    VoiceServerMove,
    VoiceStatus,
    VoiceStop,
    VoiceVolume,
    WorkerHello,
)
from ipc.errors import FatalClose
from ipc.exits import ExitStatus
from ipc.fields import check_snowflake
from ipc.intents import names_from_bits
from ipc.messages import (
    Accepted,
    Command,
    ErrorCode,
    ErrorReply,
    Event,
    GatewayCommand,
    Message,
    Reply,
    Routed,
)
from ipc.requests import (
    GetStatus,
    JoinVoice,
    LeaveVoice,
    PauseAudio,
    PlayAudio,
    Record,
    Recording,
    ReportClientStats,
    Restarting,
    RestartShards,
    ResumeAudio,
    SetVolume,
    StatusReply,
    StopAudio,
    StopFleet,
    Stopping,
    VoiceRequest,
)
from ipc.states import ShardState, VoiceOutcome, VoiceState
from ipc.status import AppRecord, BusRecord, FleetStatus, ShardRecord
from ipc.voice import VoiceFailure
from ipc.workerargs import ShardArgs
from runtime.bus import EventBus
from runtime.commands import CommandDesk, Options
from runtime.config import Config
from runtime.curveauth import ClientAllowList
from runtime.discord_rest import RestError, fetch_gateway_bot
from runtime.routing import route_command, shard_of_guild
from runtime.rundir import (
    UnsafeRuntimeDirError,
    check_owned_file,
    prepare_runtime_dir,
    remove_sockets,
)
from runtime.scheduler import IdentifyScheduler, startup_seconds
from runtime.sessions import SessionStore
from runtime.spawner import ExecSpawner, Process, ZygoteSpawner
from runtime.voice import VoiceWorker
from runtime.voicepolicy import (
    HEALTHY_AFTER,
    JOIN_TIMEOUT,
    WAIT_FOR_SERVER,
    Next,
    Op4Budget,
    after_exit,
)

__all__ = ["Endpoints", "FleetPlan", "StartupError", "Supervisor"]

log = logging.getLogger("shardline.supervisor")

MAX_SUBSCRIBERS = 1024  # client_stats reports kept


class StartupError(RuntimeError):
    """The fleet cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class Endpoints:
    """The sockets of one supervisor, all in its private runtime directory by default."""

    bus_in: str  # workers publish here (XSUB)
    events: str  # applications subscribe here (XPUB)
    control: str  # workers' DEALERs (ROUTER)
    commands: str  # applications and the CLI (ROUTER)

    @classmethod
    def in_dir(cls, runtime_dir: Path, events: str = "", commands: str = "") -> Endpoints:
        return cls(
            bus_in=f"ipc://{runtime_dir}/bus-in.sock",
            events=events or f"ipc://{runtime_dir}/events.sock",
            control=f"ipc://{runtime_dir}/control.sock",
            commands=commands or f"ipc://{runtime_dir}/commands.sock",
        )


@dataclass(frozen=True)
class FleetPlan:
    """What Discord said and what we will run."""

    gateway_url: str
    shard_count: int
    shard_ids: tuple[int, ...]
    max_concurrency: int
    remaining: int
    reset_after_ms: int


@dataclass
class ShardWorker:
    shard: int
    proc: Process | None = None
    restarts: int = 0
    crashes_in_a_row: int = 0
    last_exit: str = ""
    started_at: float = 0.0
    last_status_at: float = 0.0
    report: ShardStatus | None = None  # the process's last status report
    stopping: bool = False
    fatal: str = ""
    fatal_advice: str = ""  # the shard's FatalClose message, when it sent one
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
        r = self.report
        return ShardRecord(
            id=self.shard,
            state=self.state,
            latency=None if r is None else _number_or_none(r.raw.get("latency_ms")),
            seq=None if r is None else _int_or_none(r.raw.get("seq")),
            session=None if r is None else _text_or_none(r.raw.get("session")),
            guilds=0 if r is None else _count(r.raw.get("guilds")),
            events_per_second=0.0
            if r is None
            else float(_number_or_none(r.raw.get("dispatch_rate")) or 0.0),
            restarts=self.restarts,
            last_exit=self.last_exit,
            uptime=round(now - self.started_at, 1) if self.proc else 0.0,
            pid=self.proc.pid if self.proc else None,
            dropped=0 if r is None else _count(r.raw.get("dropped")),
        )


@dataclass
class AppWorker:
    """One process of an ``[[apps]]`` entry."""

    module: str
    index: int
    count: int
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    last_exit: str = ""
    started_at: float = 0.0

    @property
    def state(self) -> str:
        return "running" if self.proc is not None else "restarting"

    def record(self) -> AppRecord:
        return AppRecord(
            module=self.module,
            index=self.index,
            state=self.state,
            restarts=self.restarts,
            pid=self.proc.pid if self.proc else None,
        )


def _exit_with_parent() -> None:
    """In the child: die with SIGTERM if the supervisor dies (Linux), so no orphan lingers."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(
        self,
        config: Config,
        plan: FleetPlan,
        token: str,
        *,
        runtime_dir: Path,
        identify_interval: float = 5.0,
        status_interval: float = 1.0,
        progress: Callable[[str], None] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self.plan = plan
        self.token = token
        self.runtime_dir = runtime_dir
        self.endpoints = Endpoints.in_dir(runtime_dir, config.ipc.events, config.ipc.commands)
        self.scheduler = IdentifyScheduler(plan.max_concurrency, plan.remaining, identify_interval)
        self.sessions = SessionStore(runtime_dir / "sessions.json")
        self.workers = {i: ShardWorker(i) for i in plan.shard_ids}
        self.apps = [
            AppWorker(app.module, index, app.processes)
            for app in config.apps
            for index in range(app.processes)
        ]
        self.status_interval = status_interval
        self.progress = progress or (lambda line: log.info(line))
        self.python = python
        self.started = time.monotonic()
        self.fatal_message = ""
        self._stop = asyncio.Event()
        self._ctx = zmq.asyncio.Context()
        self._proxy_ctx = zmq.Context()
        self.bus: EventBus | None = None
        self._all_ready_logged = False
        self.resumed_from_disk = 0
        self.subscribers: dict[str, dict[str, Any]] = {}  # what each application reported
        self.voice: dict[int, VoiceWorker] = {}  # by guild id
        self.allow_list: ClientAllowList | None = None  # tcp:// endpoints: who may connect
        self.op4_budget = Op4Budget()
        self.desk = CommandDesk(time.monotonic)
        self._tasks: set[asyncio.Task[None]] = set()  # restarts the commands asked for
        self._register_handlers()
        spawner = ZygoteSpawner if config.shards.spawn == "fork" else ExecSpawner
        self.spawner: ZygoteSpawner | ExecSpawner = spawner(python, _exit_with_parent)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Run until ``stop`` is set, a CLI ``stop`` arrives, or a fatal error ends the fleet.
        Returns the process exit status (0 clean, 1 fatal)."""
        self._prepare_runtime_dir()
        try:
            self.resumed_from_disk = self.sessions.load(self.plan.shard_count)
        except UnsafeRuntimeDirError as exc:
            self._release_runtime_dir()
            raise StartupError(str(exc)) from None
        fresh = [i for i in self.plan.shard_ids if self.sessions.get(i) is None]
        if len(fresh) > self.plan.remaining:
            self._release_runtime_dir()
            hours = self.plan.reset_after_ms / 3_600_000
            raise StartupError(
                f"Discord allows {self.plan.remaining} more identifies until its limit resets "
                f"in {hours:.1f} h, and {len(fresh)} shards need one. Running out would reset "
                "the bot's token. Wait for the reset, or start fewer shards now (shards.ids)."
            )
        control, commands = self._open_sockets()
        self._private(
            self.endpoints.control,
            self.endpoints.commands,
            self.endpoints.events,
            self.endpoints.bus_in,
        )
        self.control = control
        self.scheduler.expect(fresh, time.monotonic())
        eta = startup_seconds(len(fresh), self.plan.max_concurrency, self.scheduler.interval)
        self.progress(
            f"starting {len(self.workers)} shards of {self.plan.shard_count} "
            f"(max_concurrency {self.plan.max_concurrency}): {self.resumed_from_disk} resume a "
            f"saved session, {len(fresh)} identify; identify bound {eta:.0f}s"
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read_control(control))
                tasks.create_task(self._read_commands(commands))
                for worker in self.workers.values():
                    tasks.create_task(self._keep_alive(worker))
                for app in self.apps:
                    tasks.create_task(self._keep_app_alive(app))
                ticker = tasks.create_task(self._tick())
                refresher = tasks.create_task(self._refresh_identify_budget())
                waiter = asyncio.ensure_future((stop or asyncio.Event()).wait())
                stopper = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                self._stop.set()  # from here on, an exiting worker is not respawned
                waiter.cancel()
                stopper.cancel()
                await self._shutdown_workers()
                ticker.cancel()
                refresher.cancel()
                raise _Done()
        except* _Done:
            pass
        finally:
            self.sessions.save()
            control.close(linger=0)
            commands.close(linger=0)
            if self.allow_list is not None:  # its ZAP sockets live in both contexts
                self.allow_list.stop()
            self._bus_pub.close(linger=0)
            self._ctx.term()
            self._stop_bus()
            self._release_runtime_dir()
        if self.fatal_message:
            self.progress(f"stopped: {self.fatal_message}")
            return 1
        self.progress("stopped; sessions saved for the next run to resume")
        return 0

    def request_stop(self, reason: str = "") -> None:
        if reason and not self.fatal_message:
            self.fatal_message = reason
        self._stop.set()

    def _prepare_runtime_dir(self) -> None:
        """Our private directory (refused when another user could have written in it), and
        the pid file that says a supervisor runs there."""
        lock = self.runtime_dir / "supervisor.pid"
        try:
            prepare_runtime_dir(self.runtime_dir)
            if check_owned_file(lock):
                with contextlib.suppress(ValueError, OSError):
                    pid = int(lock.read_text()[:32])
                    if pid != os.getpid() and _alive(pid):
                        raise StartupError(
                            f"a supervisor (pid {pid}) already runs with runtime dir "
                            f"{self.runtime_dir}; stop it (`shardline stop`) or set "
                            "ipc.runtime_dir"
                        )
        except UnsafeRuntimeDirError as exc:
            raise StartupError(str(exc)) from None
        tmp = lock.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
        os.replace(tmp, lock)

    def _secure(self, sock: zmq.Socket[Any], endpoint: str) -> None:
        """A tcp:// endpoint is a CURVE server: only clients that know its public key (from
        the config) get through; a plain client's handshake fails."""
        if not endpoint.startswith("tcp://"):
            return
        ipc = self.config.ipc
        if not (ipc.curve_public_key and ipc.curve_secret_key):
            raise StartupError(f"{endpoint} is tcp:// but ipc.curve_*_key are not set")
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, ipc.curve_secret_key.encode())

    def _release_runtime_dir(self) -> None:
        e = self.endpoints
        remove_sockets(e.bus_in, e.events, e.control, e.commands)
        with contextlib.suppress(OSError):
            (self.runtime_dir / "supervisor.pid").unlink()

    def _private(self, *endpoints: str) -> None:
        for endpoint in endpoints:
            if endpoint.startswith("ipc://"):
                with contextlib.suppress(OSError):
                    os.chmod(endpoint.removeprefix("ipc://"), 0o600)

    def _open_sockets(self) -> tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]:
        """Bind the bus, control and command sockets (with the client allow-list first for
        tcp:// endpoints); on failure close what was opened and say which endpoint failed."""
        opened: list[zmq.Socket[Any]] = []
        endpoint = ""
        try:
            if self.endpoints.events.startswith("tcp://") or self.endpoints.commands.startswith(
                "tcp://"
            ):
                self.allow_list = ClientAllowList(
                    self.config.ipc.client_public_keys, self.runtime_dir
                )
                self.allow_list.start(self._ctx, self._proxy_ctx)
            endpoint = self.endpoints.events
            self._start_bus()
            self._bus_pub = self._proxy_ctx.socket(zmq.PUB)  # the supervisor's own events
            self._bus_pub.setsockopt(zmq.LINGER, 0)
            self._bus_pub.setsockopt(zmq.SNDHWM, 1000)
            opened.append(self._bus_pub)
            self._bus_pub.connect(self.endpoints.bus_in)
            control = self._ctx.socket(zmq.ROUTER)
            opened.append(control)
            endpoint = self.endpoints.control
            control.bind(endpoint)
            commands = self._ctx.socket(zmq.ROUTER)
            opened.append(commands)
            self._secure(commands, self.endpoints.commands)
            endpoint = self.endpoints.commands
            commands.bind(endpoint)
        except zmq.ZMQError as exc:
            for sock in opened:
                sock.close(linger=0)
            if self.allow_list is not None:
                self.allow_list.stop()
            self._ctx.term()
            self._proxy_ctx.term()
            self._release_runtime_dir()
            raise StartupError(
                f"cannot listen on {endpoint}: {exc} (is another program using it?)"
            ) from None
        return control, commands

    # -- the bus --------------------------------------------------------------------------

    def _start_bus(self) -> None:
        """The event bus thread (runtime/bus.py): it owns its sockets."""
        self.bus = EventBus(
            self._proxy_ctx,
            self.endpoints.bus_in,
            self.endpoints.events,
            buffer_bytes=self.config.bus.subscriber_buffer_bytes,
            secure=lambda sock: self._secure(sock, self.endpoints.events),
        )
        self.bus.start()

    def _stop_bus(self) -> None:
        self._proxy_ctx.term()
        if self.bus is not None:
            self.bus.join(5)

    # -- workers --------------------------------------------------------------------------

    async def _spawn(self, worker: ShardWorker) -> None:
        cfg = self.config
        checkpoint = self.sessions.get(worker.shard)
        args = ShardArgs(
            shard_id=worker.shard,
            shard_count=self.plan.shard_count,
            gateway=self.plan.gateway_url,
            events=self.endpoints.bus_in,
            control=self.endpoints.control,
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
        )
        env = {**os.environ, cfg.discord.token_env: self.token}
        # Its own session: a Ctrl-C at the terminal reaches the supervisor only, which then
        # shuts the shards down in order; PDEATHSIG still ends a shard if we die.
        worker.proc = await self.spawner.spawn(args.to_argv(), env)
        worker.started_at = worker.last_status_at = time.monotonic()
        worker.report = None
        worker.respawn_at = None

    async def _keep_alive(self, worker: ShardWorker) -> None:
        """Spawn the shard, and respawn it with backoff until it stops or turns fatal."""
        restart = self.config.restart
        while not self._stop.is_set() and not worker.fatal:
            await self._spawn(worker)
            assert worker.proc is not None
            code = await worker.proc.wait()
            worker.proc = None
            self.scheduler.cancel(worker.shard)
            if worker.stopping or self._stop.is_set():
                worker.last_exit = f"stopped (status {code})"
                worker.replaced.set()
                if worker.stopping and not self._stop.is_set():
                    worker.stopping = False  # a restart: go round again at once
                    worker.restarts += 1
                    continue
                return
            if code == ExitStatus.FATAL:
                # The shard sent its advice just before exiting; give it a moment to arrive.
                for _ in range(40):
                    if worker.fatal_advice:
                        break
                    await asyncio.sleep(0.025)
                worker.fatal = worker.fatal_advice or "fatal gateway close code (see its log)"
                worker.last_exit = "fatal close code"
                # A fatal code means the token or the config is wrong for every shard: stop the
                # fleet with the shard's advice rather than watch each shard fail the same way.
                self.request_stop(f"shard {worker.shard}: {worker.fatal}")
                return
            if code == ExitStatus.USAGE:
                # A refused command line, token or CA file is refused again on every respawn.
                worker.fatal = (
                    "it refused its command line or environment (exit status 2; its log line "
                    "says why: a missing token, or a discord.ca_file it cannot read)"
                )
                worker.last_exit = "usage error"
                self.request_stop(f"shard {worker.shard}: {worker.fatal}")
                return
            worker.last_exit = (
                f"exited with status {code}" if code >= 0 else f"killed by signal {-code}"
            )
            worker.restarts += 1
            worker.crashes_in_a_row += 1
            delay = min(
                restart.backoff_max, restart.backoff_initial * 2 ** (worker.crashes_in_a_row - 1)
            )
            worker.respawn_at = time.monotonic() + delay
            log.warning(
                f"shard {worker.shard} {worker.last_exit}; respawning in {delay:.1f}s",
                extra={"fields": {"shard": worker.shard, "restarts": worker.restarts}},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _keep_app_alive(self, app: AppWorker) -> None:
        """Run one app process; restart it with backoff when it exits."""
        restart = self.config.restart
        crashes = 0
        env = {
            **os.environ,
            "SHARDLINE_EVENTS": self.endpoints.events,
            "SHARDLINE_COMMANDS": self.endpoints.commands,
            "SHARDLINE_SERVER_KEY": self.config.ipc.curve_public_key,
        }
        if self.allow_list is not None:  # our own apps use the supervisor's local key
            env["SHARDLINE_CLIENT_KEY"] = self.allow_list.local_secret
        env.pop(self.config.discord.token_env, None)  # applications never see the token
        while not self._stop.is_set():
            app.proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "ipc.app",
                "--module",
                app.module,
                "--index",
                str(app.index),
                "--count",
                str(app.count),
                env=env,
                preexec_fn=_exit_with_parent,
                start_new_session=True,
            )
            app.started_at = time.monotonic()
            try:
                code = await app.proc.wait()
            except asyncio.CancelledError:
                await _end(app.proc)
                raise
            app.proc = None
            if self._stop.is_set():
                return
            app.last_exit = (
                f"exited with status {code}" if code >= 0 else f"killed by signal {-code}"
            )
            app.restarts += 1
            crashes = crashes + 1 if time.monotonic() - app.started_at < 30 else 1
            delay = min(restart.backoff_max, restart.backoff_initial * 2 ** (crashes - 1))
            log.warning(
                f"app {app.module}[{app.index}] {app.last_exit}; restarting in {delay:.1f}s"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _shutdown_workers(self) -> None:
        for app in self.apps:
            if app.proc is not None and app.proc.returncode is None:
                app.proc.terminate()
        for worker in self.workers.values():
            worker.stopping = True
            self._send_control(worker.shard, Shutdown())
        deadline = time.monotonic() + 10.0
        for worker in self.workers.values():
            proc = worker.proc
            if proc is None:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), max(0.1, deadline - time.monotonic()))
            if proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 3)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for app in self.apps:
            if app.proc is not None:
                await _end(app.proc)
        for voice in list(self.voice.values()):
            voice.leaving = True
            await voice.stop()
        await self.spawner.close()

    async def restart_shard(self, shard: int) -> None:
        """Replace one shard process; the new one resumes from the last checkpoint."""
        worker = self.workers[shard]
        if worker.proc is None:
            return
        worker.replaced.clear()
        worker.stopping = True
        self._send_control(shard, Shutdown())
        await worker.replaced.wait()
        await self._wait_ready(worker)

    async def rolling_restart(self) -> None:
        for shard in sorted(self.workers):
            await self.restart_shard(shard)

    async def _wait_ready(self, worker: ShardWorker, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                worker.proc is not None
                and worker.state is ShardState.READY
                and (worker.last_status_at > worker.started_at)
            ):
                return
            await asyncio.sleep(0.05)

    # -- control: what workers tell us ----------------------------------------------------

    async def _read_control(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            identity = frames[0]
            try:
                message = decode_control(list(frames[1:]))
            except CodecError as exc:
                log.warning(
                    f"unreadable control message from {identity[:32]!r}: {exc}",
                    extra={"fields": {"worker": identity[:32].decode(errors="replace")}},
                )
                continue
            if identity.startswith(b"voice:"):
                self._on_voice_control(identity, message)
                continue
            shard = _shard_of(identity)
            if shard is None or shard not in self.workers:
                continue
            worker = self.workers[shard]
            now = time.monotonic()
            if isinstance(message, ShardStatus):
                worker.report = message
                worker.last_status_at = now
                if (
                    worker.state is ShardState.READY
                    and worker.crashes_in_a_row
                    and now - worker.started_at > 30
                ):
                    worker.crashes_in_a_row = 0
            elif isinstance(message, IdentifyRequest):
                self.scheduler.request(shard)
            elif isinstance(message, IdentifySent):
                self.scheduler.sent(shard, now)
            elif isinstance(message, SessionCheckpoint):
                try:
                    checkpoint = Checkpoint.from_event(message, self.plan.shard_count, time.time())
                except CheckpointError as exc:
                    log.warning(f"shard {shard} sent an unusable checkpoint ({exc}); not kept")
                    continue
                if checkpoint.shard == shard:
                    self.sessions.put(checkpoint)
            elif isinstance(message, WorkerHello):
                worker.last_status_at = now
            elif isinstance(message, GatewayForward):
                await self._on_voice_forward(message)
            elif isinstance(message, FatalClose):
                advice = message.raw.get("message") if isinstance(message.raw, dict) else None
                worker.fatal_advice = advice[:1000] if isinstance(advice, str) else ""

    # -- voice ------------------------------------------------------------------------------

    async def _on_join_voice(self, command: JoinVoice, options: Options) -> Reply:
        guild, channel = command.guild_id, command.channel_id
        voice = self.voice.get(guild)
        if voice is None or voice.channel != channel or voice.error:
            if voice is not None:
                voice.leaving = True
                await voice.stop()
            self.voice[guild] = voice = VoiceWorker(guild, channel)
        reply = self._voice_state(guild, channel)
        if isinstance(reply, ErrorReply) and voice.proc is None:
            self.voice.pop(guild, None)  # nothing was asked of Discord
        return reply

    async def _on_leave_voice(self, command: LeaveVoice, options: Options) -> Reply:
        guild = command.guild_id
        voice = self.voice.get(guild)
        if voice is None:
            return ErrorReply.of(ErrorCode.UNAVAILABLE, f"voice not connected in guild {guild}")
        voice.leaving = True
        await voice.stop()
        self.voice.pop(guild, None)
        return self._voice_state(guild, None)

    async def _on_voice_request(self, command: VoiceRequest, options: Options) -> Reply:
        """play, stop, pause, resume, volume, record: for a connected voice process."""
        guild = command.guild_id
        voice = self.voice.get(guild)
        if voice is None:
            return ErrorReply.of(ErrorCode.UNAVAILABLE, f"voice not connected in guild {guild}")
        if not voice.connected:
            why = f"failed: {voice.error}" if voice.error else voice.state
            return ErrorReply.of(
                ErrorCode.UNAVAILABLE, f"voice not connected in guild {guild} ({why})"
            )
        routed = f"voice:{guild}"
        message: Command
        if isinstance(command, PlayAudio):
            if not os.path.isfile(command.path):
                return ErrorReply.of(ErrorCode.INVALID, f"no such file: {command.path!r}")
            message = VoicePlay(path=os.path.abspath(command.path), queue=command.queue)
        elif isinstance(command, SetVolume):
            message = VoiceVolume(volume=command.volume)
        elif isinstance(command, Record):
            if command.stop:
                self._send_voice(guild, VoiceRecord(directory=""))
                return Recording(routed=routed, directory="")
            base = Path(self.config.voice.record_dir or self.runtime_dir / "recordings")
            directory = str(base / f"{guild}-{time.strftime('%Y%m%d-%H%M%S')}")
            self._send_voice(guild, VoiceRecord(directory=directory))
            return Recording(routed=routed, directory=directory)
        elif isinstance(command, StopAudio):
            message = VoiceStop()
        elif isinstance(command, PauseAudio):
            message = VoicePause()
        elif isinstance(command, ResumeAudio):
            message = VoiceResume()
        else:
            return ErrorReply.of(
                ErrorCode.UNKNOWN_COMMAND, f"{command.type_name} is not handled here"
            )
        self._send_voice(guild, message)
        return Routed(routed=routed)

    def _voice_state(self, guild: int, channel: int | None) -> Reply:
        """Ask the shard that owns ``guild`` to send op 4 (counted in its op 4 budget)."""
        shard = shard_of_guild(guild, self.plan.shard_count)
        worker = self.workers.get(shard)
        if worker is None:
            return ErrorReply.of(
                ErrorCode.UNROUTABLE, f"guild {guild} is on shard {shard}, not run here"
            )
        if worker.state is not ShardState.READY:
            return ErrorReply.of(ErrorCode.UNAVAILABLE, f"shard {shard} is down ({worker.state})")
        now = time.monotonic()
        self.op4_budget.record(shard, now)  # the bot asked: it counts, and rejoins wait for it
        self._send_control(shard, UpdateVoiceState(guild, channel))
        voice = self.voice.get(guild)
        if voice is not None and channel is not None:
            voice.join_deadline = now + JOIN_TIMEOUT
        return Routed(routed=f"shard:{shard}")

    async def _on_voice_forward(self, message: GatewayForward) -> None:
        """The bot's VOICE_STATE_UPDATE or a VOICE_SERVER_UPDATE, from a shard: Discord's
        data, checked before a voice process is started with it."""
        try:
            d = orjson.loads(message.payload)["d"]
            guild = int(d["guild_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning(f"unusable {message.t[:40]} from shard {message.shard}; ignored")
            return
        voice = self.voice.get(guild)
        if voice is None or voice.error:
            return
        if message.t == "VOICE_STATE_UPDATE":
            if d.get("channel_id") is None:  # we left, or were disconnected
                voice.leaving = True
                await voice.stop()
                self.voice.pop(guild, None)
                return
            session_id, user_id = d.get("session_id"), d.get("user_id")
            if not _short_text(session_id) or check_snowflake(user_id) is not None:
                log.warning(f"unusable VOICE_STATE_UPDATE for guild {guild}; ignored")
                return
            voice.session_id, voice.user_id = session_id, int(user_id)
        elif message.t == "VOICE_SERVER_UPDATE":
            token, endpoint = d.get("token"), d.get("endpoint")
            if not endpoint:
                return  # the server is gone; the next update names a new one
            if not (_short_text(token) and _short_text(endpoint)):
                log.warning(f"unusable VOICE_SERVER_UPDATE for guild {guild}; ignored")
                return
            # A new server or a new token (a move to another channel): identify afresh there.
            moved = voice.proc is not None and (voice.endpoint != endpoint or voice.token != token)
            voice.token, voice.endpoint = token, endpoint
            voice.server_deadline = None
            if moved:
                self._send_voice(guild, VoiceServerMove(token=token, endpoint=endpoint))
                return
        if voice.ready_to_start:
            voice.rejoin_at = None
            await voice.start(
                self.endpoints.control,
                self.endpoints.bus_in,
                self.config.discord.ca_file,
                self.config.log.level,
                self.config.voice,
                _exit_with_parent,
                self._voice_exited,
                self.config.discord.token_env,
            )

    async def _voice_exited(self, voice: VoiceWorker, code: int) -> None:
        """A voice process exited by itself: rejoin, wait for a new server, or give up, as
        :func:`runtime.voicepolicy.after_exit` says for how its session ended."""
        if voice.leaving or self._stop.is_set() or self.voice.get(voice.guild) is not voice:
            return
        now = time.monotonic()
        if voice.connected_since is not None and now - voice.connected_since >= HEALTHY_AFTER:
            voice.rejoins = 0  # that session was healthy: this is a first failure again
        voice.connected_since = None
        outcome, message = voice.ended or (None, f"the voice process exited ({code})")
        voice.ended = None
        voice.report = None
        voice.session_id = voice.token = voice.endpoint = ""
        decision = after_exit(outcome, message, voice.rejoins)
        if decision.next is Next.FAIL:
            self._voice_failed(voice, decision.reason)
        elif decision.next is Next.WAIT_SERVER:
            log.warning(
                f"voice in guild {voice.guild}: {message}; waiting {decision.delay:.0f}s for a "
                "new voice server"
            )
            voice.server_deadline = now + decision.delay
        else:
            voice.rejoins += 1
            voice.rejoin_at = now + decision.delay
            log.warning(
                f"voice in guild {voice.guild}: {message}; rejoining in {decision.delay:.1f}s "
                f"(rejoin {voice.rejoins})"
            )

    def _voice_failed(self, voice: VoiceWorker, reason: str) -> None:
        """End a guild's voice session for good: say why in the log, in status and on the
        bus, and leave the channel (the bot would sit in it deaf and mute)."""
        log.error(f"voice in guild {voice.guild} failed: {reason}")
        voice.fail(reason)
        self._publish(VoiceFailure(message=reason, source="supervisor", guild_id=voice.guild))
        shard = (voice.guild >> 22) % self.plan.shard_count
        if shard in self.workers:
            self.op4_budget.record(shard, time.monotonic())
            self._send_control(shard, UpdateVoiceState(voice.guild, None))

    def _voice_tick(self, now: float) -> None:
        """The voice deadlines: due rejoins (within the op 4 budget), joins that took too
        long, and 4014 waits that no new voice server ended."""
        for voice in list(self.voice.values()):
            if voice.error or voice.leaving:
                continue
            if voice.rejoin_at is not None and now >= voice.rejoin_at:
                shard = (voice.guild >> 22) % self.plan.shard_count
                worker = self.workers.get(shard)
                wait = self.op4_budget.wait(shard, now)
                if worker is None or worker.state != "ready" or wait > 0:
                    voice.rejoin_at = now + max(wait, 1.0)  # the shard is busy or down
                    continue
                voice.rejoin_at = None
                self.op4_budget.take(shard, now)
                self._send_control(shard, UpdateVoiceState(voice.guild, voice.channel))
                voice.join_deadline = now + JOIN_TIMEOUT
            elif voice.server_deadline is not None and now >= voice.server_deadline:
                self._voice_failed(
                    voice,
                    f"disconnected (4014: kicked, channel deleted or moved) and no new voice "
                    f"server came within {WAIT_FOR_SERVER:.0f}s",
                )
            elif voice.join_deadline is not None and now >= voice.join_deadline:
                if voice.proc is not None:
                    continue  # connecting: the voice process's own timeout ends it
                self._voice_failed(
                    voice,
                    f"Discord sent no voice state and server for guild {voice.guild} within "
                    f"{JOIN_TIMEOUT:.0f}s of the join: is the bot in the guild, may it connect "
                    f"to channel {voice.channel}, is the channel full?",
                )

    def _on_voice_control(self, identity: bytes, message: Any) -> None:
        try:
            guild = int(identity.removeprefix(b"voice:"))
        except ValueError:
            return
        voice = self.voice.get(guild)
        if voice is None:
            return
        if isinstance(message, VoiceStatus):
            voice.report = message
            if voice.state is VoiceState.CONNECTED:
                voice.join_deadline = None
                if voice.connected_since is None:
                    voice.connected_since = time.monotonic()
        elif isinstance(message, VoiceEnded):
            outcome, text = message.raw.get("outcome"), message.raw.get("message")
            if isinstance(text, str):
                try:
                    said: VoiceOutcome | None = VoiceOutcome(outcome)
                except ValueError:
                    said = None  # an outcome nobody declared: retried like a crash
                voice.ended = (said, text[:1000])

    def _publish(self, event: Event) -> None:
        """A supervisor event on the bus (never blocking)."""
        with contextlib.suppress(zmq.ZMQError):
            self._bus_pub.send_multipart(
                encode_bus_event(event, "supervisor", time.time_ns()), flags=zmq.NOBLOCK
            )

    def _send_voice(self, guild: int, message: Message) -> None:
        self._send_to(f"voice:{guild}", message)

    def _send_control(self, shard: int, message: Message) -> None:
        self._send_to(f"shard:{shard}", message)

    def _send_to(self, identity: str, message: Message) -> None:
        """A control message to one worker, never blocking the supervisor."""
        with contextlib.suppress(zmq.ZMQError):
            self.control.send_multipart(control_to(identity, message), flags=zmq.NOBLOCK)

    # -- periodic work --------------------------------------------------------------------

    async def _tick(self) -> None:
        hang = self.config.restart.hang_timeout
        last_progress = ""
        last_save = time.monotonic()
        while True:
            now = time.monotonic()
            for shard in self.scheduler.poll(now):
                self._send_control(shard, IdentifyPermit())
            self._voice_tick(now)
            for worker in self.workers.values():
                proc = worker.proc
                if (
                    proc is not None
                    and proc.returncode is None
                    and now - worker.last_status_at > hang
                ):
                    log.warning(f"shard {worker.shard} sent no status for {hang:.0f}s: killing it")
                    worker.last_exit = "hung (no status)"
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    worker.last_status_at = now
            line = self._progress_line()
            if line != last_progress:
                self.progress(line)
                last_progress = line
            if self.sessions.dirty and now - last_save > 5.0:
                self.sessions.save()
                last_save = now
            deadline = self.scheduler.next_deadline()
            wait = 0.25 if deadline is None else min(0.25, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(wait)

    async def _refresh_identify_budget(self) -> None:
        """While shards wait for a spent identify budget, ask ``GET /gateway/bot`` again
        once Discord said it resets (then with growing delays while it fails or stays 0).
        Running shards are never stopped for the budget: only identifies wait."""
        reset_at = self.started + self.plan.reset_after_ms / 1000
        retry = 5.0
        while True:
            while not self.scheduler.starved:
                await asyncio.sleep(1.0)
            waiting = self.scheduler.waiting
            wait = max(0.0, reset_at - time.monotonic())
            log.error(
                f"identify budget spent: {waiting} shard(s) wait to identify until Discord's "
                f"daily limit resets (asking again in {wait:.0f}s); running shards keep "
                "running, and an identify now would get the bot's token reset",
                extra={"fields": {"waiting": waiting}},
            )
            await asyncio.sleep(wait)
            try:
                info = await asyncio.to_thread(
                    fetch_gateway_bot, self.config.discord.rest_url, self.token
                )
            except RestError as exc:
                log.warning(f"cannot refresh the identify budget: {exc}; again in {retry:.0f}s")
                reset_at = time.monotonic() + retry
                retry = min(retry * 2, 600.0)
                continue
            retry = 5.0
            self.scheduler.refill(info.remaining)
            reset_at = time.monotonic() + max(info.reset_after_ms / 1000, 5.0)
            log.info(
                f"identify budget refreshed: {info.remaining} of {info.total} left today",
                extra={"fields": {"remaining": info.remaining}},
            )

    def _progress_line(self) -> str:
        ready = sum(1 for w in self.workers.values() if w.state == "ready")
        total = len(self.workers)
        if ready == total:
            return f"shards ready {ready}/{total}"
        waiting = self.scheduler.waiting
        rounds = math.ceil(waiting / self.scheduler.max_concurrency)
        eta = rounds * self.scheduler.interval
        return f"shards ready {ready}/{total}, {waiting} waiting to identify, ETA {eta:.0f}s"

    # -- commands: what applications and the CLI ask -------------------------------------

    async def _read_commands(self, sock: zmq.asyncio.Socket) -> None:
        """Every request gets exactly one reply, whatever it holds (docs/wire.md)."""
        while True:
            frames = await sock.recv_multipart()
            for message in await self.desk.receive(list(frames)):
                await sock.send_multipart(message)

    def _register_handlers(self) -> None:
        """The supervisor's handler table: one handler per command class."""
        desk = self.desk
        desk.handle(GetStatus, self._on_status)
        desk.handle(ReportClientStats, self._on_client_stats)
        desk.handle(StopFleet, self._on_stop)
        desk.handle(RestartShards, self._on_restart)
        desk.handle(GatewayCommand, self._on_gateway_command)
        desk.handle(JoinVoice, self._on_join_voice)
        desk.handle(LeaveVoice, self._on_leave_voice)
        desk.handle(VoiceRequest, self._on_voice_request)

    async def _on_status(self, command: GetStatus, options: Options) -> Reply:
        return StatusReply(status=self.status().to_json())

    async def _on_client_stats(self, command: ReportClientStats, options: Options) -> Reply:
        name = command.name
        if name not in self.subscribers and len(self.subscribers) >= MAX_SUBSCRIBERS:
            self._forget_quiet_subscribers()
        self.subscribers[name] = {
            "received": command.received,
            "gaps": command.gaps,
            "at": time.monotonic(),
        }
        return Accepted()

    async def _on_stop(self, command: StopFleet, options: Options) -> Reply:
        self.request_stop()
        return Stopping(stopping=True)

    async def _on_restart(self, command: RestartShards, options: Options) -> Reply:
        if command.rolling:
            self._background(self.rolling_restart(), "rolling restart")
            return Restarting(restarting=sorted(self.workers))
        shard = command.shard
        if shard not in self.workers:
            return ErrorReply.of(
                ErrorCode.UNROUTABLE,
                f"no shard {shard!r} on this host (shards: {sorted(self.workers)})",
            )
        self._background(self.restart_shard(shard), f"restart of shard {shard}")
        return Restarting(restarting=[shard])

    async def _on_gateway_command(self, command: GatewayCommand, options: Options) -> Reply:
        type_name = command.type_name
        size = len(encode_gateway_command(command))
        if size > MAX_GATEWAY_PAYLOAD:
            return ErrorReply.of(
                ErrorCode.TOO_LARGE,
                f"{type_name} is {size} bytes, over the gateway's {MAX_GATEWAY_PAYLOAD}-byte "
                "limit; not sent",
            )
        routed = route_command(options, command.raw, self.plan.shard_count, self.workers)
        if isinstance(routed, str):
            return ErrorReply.of(ErrorCode.UNROUTABLE, routed)
        worker = self.workers[routed]
        if worker.state is not ShardState.READY:
            return ErrorReply.of(
                ErrorCode.UNAVAILABLE,
                f"shard {routed} is down ({worker.state}); the command was not sent",
            )
        self._send_control(routed, command)
        return Routed(routed=f"shard:{routed}")

    def _background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``work`` as a task the supervisor owns: cancelled at shutdown, its failure
        logged (never lost with an unreferenced task)."""

        async def owned() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(f"{what} failed")

        task = asyncio.get_running_loop().create_task(owned())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget_quiet_subscribers(self) -> None:
        """Keep client_stats bounded: drop reports older than 10 s, else the oldest."""
        now = time.monotonic()
        for name in [k for k, v in self.subscribers.items() if now - v["at"] >= 10]:
            del self.subscribers[name]
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            del self.subscribers[min(self.subscribers, key=lambda k: self.subscribers[k]["at"])]

    def status(self) -> FleetStatus:
        now = time.monotonic()
        shards = [worker.record(now) for worker in self.workers.values()]
        live = {k: v for k, v in self.subscribers.items() if now - v["at"] < 10}
        subscribers = self.bus.stats() if self.bus is not None else []
        bus = BusRecord(
            subscribers_reporting=len(live),
            subscriber_gaps=sum(v["gaps"] for v in live.values()),
            shard_drops=sum(s.dropped for s in shards),
            subscriber_drops=sum(s.dropped for s in subscribers),
            subscribers=subscribers,
        )
        return FleetStatus(
            bus=bus,
            shard_count=self.plan.shard_count,
            identifies_remaining=self.scheduler.remaining,
            uptime=round(now - self.started, 1),
            shards=shards,
            apps=[app.record() for app in self.apps],
            voice=[v.record() for v in self.voice.values()],
        )


class _Done(Exception):
    pass


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Terminate a child, then kill it if it lingers."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _short_text(value: Any) -> bool:
    """A non-empty string of reasonable length (a token, an endpoint, a session id)."""
    return isinstance(value, str) and 0 < len(value) <= 512 and value.isprintable()


def _number_or_none(value: Any) -> float | None:
    """A number a worker reported (its own process, but checked: one bad field must not
    break ``shardline status``)."""
    if type(value) in (int, float) and math.isfinite(value):
        return float(value)
    return None


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _text_or_none(value: Any) -> str | None:
    return value[:256] if isinstance(value, str) else None


def _shard_of(identity: bytes) -> int | None:
    kind, _, ident = identity.decode(errors="replace").partition(":")
    return int(ident) if kind == "shard" and ident.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
