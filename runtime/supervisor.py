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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zmq
import zmq.asyncio

from ipc.codec import MAX_GATEWAY_PAYLOAD, encode_bus_event, encode_gateway_command
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
from ipc.fields import InvalidFieldError, check_snowflake
from ipc.intents import names_from_bits
from ipc.messages import REGISTRY, Event, GatewayCommand
from ipc.voice import VoiceFailure
from runtime.bus import EventBus
from runtime.config import Config
from runtime.curveauth import ClientAllowList
from runtime.discord_rest import RestError, fetch_gateway_bot
from runtime.rundir import (
    UnsafeRuntimeDirError,
    check_owned_file,
    prepare_runtime_dir,
    remove_sockets,
)
from runtime.scheduler import IdentifyScheduler, startup_seconds
from runtime.sessions import Checkpoint, SessionStore
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

MAX_TYPE_NAME = 128  # longer command type names are refused (and not echoed whole)
MAX_REQUEST_ID = 64
MAX_SUBSCRIBERS = 1024  # client_stats reports kept
EXIT_USAGE = 2  # python -m shards: its command line or environment was refused
EXIT_FATAL = 3  # python -m shards: a fatal close code


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
    status: dict[str, Any] = field(default_factory=dict)
    stopping: bool = False
    fatal: str = ""
    fatal_advice: str = ""  # the shard's FatalClose message, when it sent one
    respawn_at: float | None = None
    replaced: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def state(self) -> str:
        if self.fatal:
            return "fatal"
        if self.proc is None:
            return "restarting" if self.respawn_at is not None else "stopped"
        return str(self.status.get("state", "starting"))


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
        args = [
            "--shard-id",
            str(worker.shard),
            "--shard-count",
            str(self.plan.shard_count),
            "--gateway",
            self.plan.gateway_url,
            "--events",
            self.endpoints.bus_in,
            "--control",
            self.endpoints.control,
            "--intents",
            ",".join(names_from_bits(cfg.shards.intents)) or str(cfg.shards.intents),
            "--compression",
            cfg.shards.compression,
            "--large-threshold",
            str(cfg.shards.large_threshold),
            "--max-payload-bytes",
            str(cfg.shards.max_payload_bytes),
            "--max-identifies-per-hour",
            str(cfg.shards.max_identifies_per_hour),
            "--token-env",
            cfg.discord.token_env,
            "--log-level",
            cfg.log.level,
            "--log-format",
            cfg.log.format,
        ]
        if cfg.discord.ca_file:
            args += ["--ca-file", cfg.discord.ca_file]
        checkpoint = self.sessions.get(worker.shard)
        if checkpoint is not None:
            args += ["--resume", checkpoint.resume_arg()]
        env = {**os.environ, cfg.discord.token_env: self.token}
        # Its own session: a Ctrl-C at the terminal reaches the supervisor only, which then
        # shuts the shards down in order; PDEATHSIG still ends a shard if we die.
        worker.proc = await self.spawner.spawn(args, env)
        worker.started_at = worker.last_status_at = time.monotonic()
        worker.status = {"state": "starting"}
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
            if code == EXIT_FATAL:
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
            if code == EXIT_USAGE:
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
                and worker.status.get("state") == "ready"
                and (worker.last_status_at > worker.started_at)
            ):
                return
            await asyncio.sleep(0.05)

    # -- control: what workers tell us ----------------------------------------------------

    async def _read_control(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3:
                continue
            identity, type_name, body = frames
            cls = REGISTRY.event(type_name.decode(errors="replace"))
            if cls is None:
                log.warning("unknown control message", extra={"fields": {"type": type_name}})
                continue
            try:
                message = cls.from_raw(orjson.loads(body))
            except orjson.JSONDecodeError:
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
                worker.status = dict(message.raw)
                worker.last_status_at = now
                if (
                    message.state == "ready"
                    and worker.crashes_in_a_row
                    and now - worker.started_at > 30
                ):
                    worker.crashes_in_a_row = 0
            elif isinstance(message, IdentifyRequest):
                self.scheduler.request(shard)
            elif isinstance(message, IdentifySent):
                self.scheduler.sent(shard, now)
            elif isinstance(message, SessionCheckpoint):
                self.sessions.put(
                    Checkpoint(
                        shard,
                        self.plan.shard_count,
                        message.session_id,
                        message.seq,
                        message.resume_url,
                        time.time(),
                        message.guilds,
                        _snowflake_or_empty(message.raw.get("user_id")),
                    )
                )
            elif isinstance(message, WorkerHello):
                worker.last_status_at = now
            elif isinstance(message, GatewayForward):
                await self._on_voice_forward(message)
            elif message.type_name == "shardline.error.fatal_close":
                worker.fatal_advice = str(message.raw.get("message") or "")

    # -- voice ------------------------------------------------------------------------------

    async def _voice_command(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        if "guild_id" not in data:
            return {"ok": False, "error": "voice commands need a guild_id"}
        problem = check_snowflake(data["guild_id"])
        if problem is not None:
            return {"ok": False, "error": f"voice {action[:32]}: guild_id {problem}"}
        guild = int(data["guild_id"])
        voice = self.voice.get(guild)
        if action == "join":
            if "channel_id" not in data:
                return {"ok": False, "error": "voice join needs a channel_id"}
            problem = check_snowflake(data["channel_id"])
            if problem is not None:
                return {"ok": False, "error": f"voice join: channel_id {problem}"}
            channel = int(data["channel_id"])
            if voice is None or voice.channel != channel or voice.error:
                if voice is not None:
                    voice.leaving = True
                    await voice.stop()
                self.voice[guild] = voice = VoiceWorker(guild, channel)
            reply = await self._voice_state(guild, channel)
            if not reply["ok"] and voice.proc is None:
                self.voice.pop(guild, None)  # nothing was asked of Discord
            return reply
        if voice is None:
            return {"ok": False, "error": f"voice not connected in guild {guild}"}
        if action == "leave":
            voice.leaving = True
            await voice.stop()
            self.voice.pop(guild, None)
            return await self._voice_state(guild, None)
        if voice.proc is None or voice.status.get("state") != "connected":
            why = f"failed: {voice.error}" if voice.error else voice.state
            return {"ok": False, "error": f"voice not connected in guild {guild} ({why})"}
        if action == "play":
            path = data.get("path", "")
            if not isinstance(path, str) or "\0" in path or len(path) > 4096:
                return {"ok": False, "error": "voice play: path must be a file path"}
            if not os.path.isfile(path):
                return {"ok": False, "error": f"no such file: {path!r}"}
            queued = bool(data.get("queue", False))
            self._send_voice(guild, VoicePlay(path=os.path.abspath(path), queue=queued))
            return {"ok": True, "routed": f"voice:{guild}"}
        if action == "volume":
            try:
                volume = float(data["volume"])
            except (KeyError, TypeError, ValueError):
                return {"ok": False, "error": "voice volume needs a number (1.0 = as is)"}
            if not 0.0 <= volume <= 2.0:
                return {"ok": False, "error": f"volume {volume} is outside 0.0-2.0"}
            self._send_voice(guild, VoiceVolume(volume=volume))
            return {"ok": True, "routed": f"voice:{guild}"}
        if action == "record":
            if data.get("stop"):
                self._send_voice(guild, VoiceRecord(directory=""))
                return {"ok": True, "routed": f"voice:{guild}"}
            base = Path(self.config.voice.record_dir or self.runtime_dir / "recordings")
            directory = base / f"{guild}-{time.strftime('%Y%m%d-%H%M%S')}"
            self._send_voice(guild, VoiceRecord(directory=str(directory)))
            return {"ok": True, "routed": f"voice:{guild}", "directory": str(directory)}
        simple = {"stop": VoiceStop, "pause": VoicePause, "resume": VoiceResume}
        if action in simple:
            self._send_voice(guild, simple[action]())
            return {"ok": True, "routed": f"voice:{guild}"}
        return {"ok": False, "error": f"unknown voice command {action!r}"}

    async def _voice_state(self, guild: int, channel: int | None) -> dict[str, Any]:
        """Ask the shard that owns ``guild`` to send op 4 (counted in its op 4 budget)."""
        shard = (guild >> 22) % self.plan.shard_count
        worker = self.workers.get(shard)
        if worker is None:
            return {"ok": False, "error": f"guild {guild} is on shard {shard}, not run here"}
        if worker.state != "ready":
            return {"ok": False, "error": f"shard {shard} is down ({worker.state})"}
        now = time.monotonic()
        self.op4_budget.record(shard, now)  # the bot asked: it counts, and rejoins wait for it
        self._send_control(shard, UpdateVoiceState(guild, channel))
        voice = self.voice.get(guild)
        if voice is not None and channel is not None:
            voice.join_deadline = now + JOIN_TIMEOUT
        return {"ok": True, "routed": f"shard:{shard}"}

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
        outcome, message = voice.ended or ("rejoin", f"the voice process exited ({code})")
        voice.ended = None
        voice.status = {}
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
            voice.status = dict(message.raw)
            if message.raw.get("state") == "connected":
                voice.join_deadline = None
                if voice.connected_since is None:
                    voice.connected_since = time.monotonic()
        elif isinstance(message, VoiceEnded):
            outcome, text = message.raw.get("outcome"), message.raw.get("message")
            if isinstance(outcome, str) and isinstance(text, str):
                voice.ended = (outcome[:64], text[:1000])

    def _publish(self, event: Event) -> None:
        """A supervisor event on the bus (never blocking)."""
        with contextlib.suppress(zmq.ZMQError):
            self._bus_pub.send_multipart(
                encode_bus_event(event, "supervisor", time.time_ns()), flags=zmq.NOBLOCK
            )

    def _send_voice(self, guild: int, message: Any) -> None:
        self._send_to(f"voice:{guild}", message)

    def _send_control(self, shard: int, message: Any) -> None:
        self._send_to(f"shard:{shard}", message)

    def _send_to(self, identity: str, message: Any) -> None:
        """A control message to one worker, never blocking the supervisor."""
        frames = [identity.encode(), message.type_name.encode(), orjson.dumps(message.raw)]
        with contextlib.suppress(zmq.ZMQError):
            self.control.send_multipart(frames, flags=zmq.NOBLOCK)

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
            identity, request_id = frames[0], frames[1] if len(frames) > 1 else b""
            request_id = request_id[:MAX_REQUEST_ID]
            if not 4 <= len(frames) <= 5:
                reply: dict[str, Any] = {
                    "ok": False,
                    "error": f"a request is 4 frames (id, type, body, options), not "
                    f"{len(frames) - 1}",
                }
            else:
                type_name = frames[2][:MAX_TYPE_NAME].decode(errors="replace")
                options = frames[4] if len(frames) > 4 else b"{}"
                try:
                    if len(frames[2]) > MAX_TYPE_NAME:
                        reply = {"ok": False, "error": f"unknown command type {type_name!r}..."}
                    else:
                        reply = await self._handle_command(type_name, frames[3], options)
                except Exception as exc:  # a bad request must never take the supervisor down
                    log.exception(f"command {type_name!r} failed")
                    reply = {"ok": False, "error": f"internal error ({type(exc).__name__})"}
            await sock.send_multipart([identity, request_id, orjson.dumps(reply)])

    async def _handle_command(
        self, type_name: str, body: bytes, options_raw: bytes
    ) -> dict[str, Any]:
        try:
            options = orjson.loads(options_raw) or {}
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError as exc:
            return {"ok": False, "error": f"request is not JSON: {exc}"}
        if not isinstance(options, dict):
            return {"ok": False, "error": "options must be a JSON object"}
        if type_name.startswith("shardline.") and not isinstance(data, dict):
            return {"ok": False, "error": f"{type_name}: the body must be a JSON object"}
        if type_name == "shardline.status":
            return {"ok": True, "status": self.status()}
        if type_name == "shardline.client_stats":
            name, received, gaps = data.get("name"), data.get("received"), data.get("gaps")
            if not isinstance(name, str) or len(name) > 128:
                return {"ok": False, "error": "client_stats: name must be a short string"}
            if type(received) is not int or type(gaps) is not int:
                return {"ok": False, "error": "client_stats: received and gaps are integers"}
            if name not in self.subscribers and len(self.subscribers) >= MAX_SUBSCRIBERS:
                self._forget_quiet_subscribers()
            self.subscribers[name] = {"received": received, "gaps": gaps, "at": time.monotonic()}
            return {"ok": True}
        if type_name.startswith("shardline.voice."):
            return await self._voice_command(type_name.removeprefix("shardline.voice."), data)
        if type_name == "shardline.stop":
            self.request_stop()
            return {"ok": True, "stopping": True}
        if type_name == "shardline.restart":
            if data.get("rolling") is True:
                asyncio.get_running_loop().create_task(self.rolling_restart())
                return {"ok": True, "restarting": sorted(self.workers)}
            shard = data.get("shard")
            if type(shard) is not int or shard not in self.workers:
                return {
                    "ok": False,
                    "error": f"no shard {shard!r} on this host (shards: {sorted(self.workers)})",
                }
            asyncio.get_running_loop().create_task(self.restart_shard(int(shard)))
            return {"ok": True, "restarting": [shard]}
        cls = REGISTRY.command(type_name)
        if cls is None:
            return {"ok": False, "error": f"unknown command type {type_name!r}"}
        if not issubclass(cls, GatewayCommand) or not cls.from_applications:
            return {"ok": False, "error": f"{type_name} is not a gateway command an app may send"}
        command = cls.from_raw(data)
        try:
            command.validate()
        except InvalidFieldError as exc:
            return {"ok": False, "error": f"{type_name}: {exc}; not sent"}
        size = len(encode_gateway_command(command))
        if size > MAX_GATEWAY_PAYLOAD:
            return {
                "ok": False,
                "error": f"{type_name} is {size} bytes, over the gateway's "
                f"{MAX_GATEWAY_PAYLOAD}-byte limit; not sent",
            }
        shard = self._route(options, data)
        if isinstance(shard, str):
            return {"ok": False, "error": shard}
        worker = self.workers[shard]
        if worker.state != "ready":
            return {
                "ok": False,
                "error": f"shard {shard} is down ({worker.state}); the command was not sent",
            }
        frames = [f"shard:{shard}".encode(), type_name.encode(), body]
        await self.control.send_multipart(frames)
        return {"ok": True, "routed": f"shard:{shard}"}

    def _route(self, options: dict[str, Any], data: dict[str, Any]) -> int | str:
        """The shard a command goes to, or an error saying why there is none."""
        if "shard" in options:
            shard = options["shard"]
            if type(shard) is not int:
                return f"options.shard must be a shard id, not {_cut(shard)}"
        else:
            guild = options.get("guild_id") or data.get("guild_id")
            if guild is None:
                return "the command needs a guild_id (or a shard) to be routed"
            problem = check_snowflake(guild)
            if problem is not None:
                return f"guild_id {problem}"
            shard = (int(guild) >> 22) % self.plan.shard_count
        if shard not in self.workers:
            return (
                f"shard {shard} is not run by this host (it runs {_ranges(sorted(self.workers))})"
            )
        return shard

    def _forget_quiet_subscribers(self) -> None:
        """Keep client_stats bounded: drop reports older than 10 s, else the oldest."""
        now = time.monotonic()
        for name in [k for k, v in self.subscribers.items() if now - v["at"] >= 10]:
            del self.subscribers[name]
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            del self.subscribers[min(self.subscribers, key=lambda k: self.subscribers[k]["at"])]

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        shards = []
        for worker in self.workers.values():
            s = worker.status
            shards.append(
                {
                    "id": worker.shard,
                    "state": worker.state,
                    "latency": s.get("latency_ms"),
                    "seq": s.get("seq"),
                    "session": s.get("session"),
                    "guilds": s.get("guilds", 0),
                    "events_per_second": s.get("dispatch_rate", 0.0),
                    "restarts": worker.restarts,
                    "last_exit": worker.last_exit,
                    "uptime": round(now - worker.started_at, 1) if worker.proc else 0.0,
                    "pid": worker.proc.pid if worker.proc else None,
                    "dropped": s.get("dropped", 0),
                }
            )
        live = {k: v for k, v in self.subscribers.items() if now - v["at"] < 10}
        subscribers = self.bus.stats() if self.bus is not None else []
        bus = {
            "subscribers_reporting": len(live),
            "subscriber_gaps": sum(v["gaps"] for v in live.values()),
            "shard_drops": sum(s["dropped"] or 0 for s in shards),
            "subscriber_drops": sum(s["dropped"] for s in subscribers),
            "subscribers": subscribers,
        }
        return {
            "bus": bus,
            "shard_count": self.plan.shard_count,
            "identifies_remaining": self.scheduler.remaining,
            "uptime": round(now - self.started, 1),
            "shards": shards,
            "apps": [
                {
                    "module": app.module,
                    "index": app.index,
                    "state": app.state,
                    "restarts": app.restarts,
                    "pid": app.proc.pid if app.proc else None,
                }
                for app in self.apps
            ],
            "voice": [v.summary() for v in self.voice.values()],
        }


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


def _snowflake_or_empty(value: Any) -> str:
    """A worker's user id as the session store keeps it ("" when absent or not an id)."""
    return value if isinstance(value, str) and check_snowflake(value) is None else ""


def _cut(value: Any, limit: int = 40) -> str:
    """A value from outside, for an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    if not ids:
        return "none"
    out: list[str] = []
    start = prev = ids[0]
    for i in [*ids[1:], -1]:
        if i == prev + 1:
            prev = i
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = i
    return ",".join(out)
