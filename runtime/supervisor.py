"""The supervisor: turns one config into a fleet of shard processes, and keeps it running.

It is a composition root over small managers, each owning its tasks: the runtime dir and
its lock (``runtime.rundir``), the sockets and the bus (``runtime.wiring``), the shard
processes (``runtime.shardfleet``), the application processes (``runtime.apps``), the voice
sessions (``runtime.voicefleet``), the command desk (``runtime.commands``), the identify
schedule and the saved sessions. Their decisions are pure functions tested without
processes (``restartpolicy``, ``voicepolicy``, ``routing``, ``scheduler``). It never imports a
worker's loop: workers are processes (``python -m shards``, ``python -m voiceworker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq.asyncio

from ipc.codec import MAX_GATEWAY_PAYLOAD, CodecError, decode_control, encode_gateway_command
from ipc.control import GatewayForward
from ipc.eventloop import one_malloc_arena
from ipc.events import Resharded
from ipc.messages import Accepted, ErrorCode, ErrorReply, GatewayCommand, Reply, Routed
from ipc.requests import (
    MAX_SERVED_TYPES,
    VIA,
    Deploy,
    Deploying,
    GetStatus,
    RawRequest,
    ReportClientStats,
    Reshard,
    ReshardPlan,
    Restarting,
    RestartShards,
    StatusReply,
    StopFleet,
    Stopping,
    decode_request,
)
from ipc.states import ShardState
from ipc.status import BudgetRecord, BusRecord, FleetStatus, HostRecord, ReshardRecord
from runtime.apps import AppFleet, AppWorker
from runtime.cluster.appshare import app_slots, apps_running_elsewhere, my_apps
from runtime.cluster.peers import Peer, advertised, peer_info, read_peers
from runtime.commands import CommandDesk, Options
from runtime.config import Config, parse_listen
from runtime.curveauth import ClientAllowList
from runtime.discord_rest import RestError, fetch_gateway_bot
from runtime.peercommands import PeerCommands
from runtime.reshard import (
    ReshardTarget,
    check_reshard,
    plan_reply,
    ready_to_switch,
    round_up,
    shard_multiple,
)
from runtime.reshard import record as reshard_record
from runtime.routing import forward_target, route_command
from runtime.rundir import (
    AlreadyRunningError,
    UnsafeRuntimeDirError,
    lock_runtime_dir,
    unlock_runtime_dir,
)
from runtime.scheduler import IdentifyScheduler, ScheduleView, startup_seconds
from runtime.sessions import SessionStore
from runtime.shardfleet import ShardFleet, ShardWorker
from runtime.spawner import ExecSpawner, ZygoteSpawner
from runtime.voice import VoiceWorker
from runtime.voicefleet import VoiceFleet
from runtime.wiring import Endpoints, StartupError, Wiring

__all__ = ["Endpoints", "FleetPlan", "StartupError", "Supervisor"]

if TYPE_CHECKING:  # imported when configured: a single host needs neither Redis nor Prometheus
    from runtime.clusterhost import ClusterHost
    from runtime.clusterreshard import FleetResharding
    from runtime.metricsserver import MetricsServer

log = logging.getLogger("shardline.supervisor")
SHARDING_REQUIRED = 4011
CROWDED_SHARD = 2_000  # guilds on one shard: 80% of the 2,500 Discord allows
MAX_PUBLISHED_VOICE = 10_000  # voice sessions a host names in its entry, at most

MAX_SUBSCRIBERS = 1024  # client_stats reports kept
TICK = 0.25  # the supervisor's periodic work runs at least this often


@dataclass(frozen=True)
class FleetPlan:
    """What Discord said and what we will run."""

    gateway_url: str
    shard_count: int
    shard_ids: tuple[int, ...]
    max_concurrency: int
    remaining: int
    reset_after_ms: int


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
        one_malloc_arena()  # before the bus thread: a burst's memory comes back as one heap
        self.config = config
        self.plan = plan
        self.token = token
        self.runtime_dir = runtime_dir
        clustered = config.cluster.enabled  # shards come as this host takes their leases
        self.endpoints = Endpoints.in_dir(
            runtime_dir,
            config.ipc.events,
            config.ipc.commands,
            peer_in=config.cluster.peer_listen if clustered else None,
        )
        self.wiring = Wiring(config, self.endpoints, runtime_dir)
        self.scheduler = IdentifyScheduler(plan.max_concurrency, plan.remaining, identify_interval)
        self.sessions = SessionStore(runtime_dir / "sessions.json")
        self._spawner = ZygoteSpawner if config.shards.spawn == "fork" else ExecSpawner
        self._python = python
        # A reshard runs two generations of shards side by side (runtime/reshard.py): each on
        # one of two slots, "a" (control.sock, bus-in.sock) and "b" (their -2 twins), the
        # one identify schedule shared between them.
        self.slot = "a"  # the current generation's
        self._grants: list[int] = []
        self.shards = ShardFleet(
            config,
            () if clustered else plan.shard_ids,
            plan.shard_count,
            plan.gateway_url,
            token=token,
            scheduler=ScheduleView(self.scheduler, 0, self._grants),
            sessions=self.sessions,
            spawner=self._spawner(python, _exit_with_parent),
            send=lambda who, message: self.wiring.send_on(self.wiring.control, who, message),
            stop_fleet=lambda reason: self._shard_fatal("a", reason),
            bus_in=self.endpoints.bus_in,
            control=self.endpoints.control,
        )
        self.generations: dict[str, ShardFleet] = {"a": self.shards}
        self.reshard_status: ReshardRecord | None = None
        self._reshard_task: asyncio.Task[None] | None = None
        self.reshard_abort = asyncio.Event()
        self.reshard_problem = ""
        self._deploy_task: asyncio.Task[None] | None = None
        self._reshard_wanted = asyncio.Event()  # auto_reshard: look now (a 4011)
        self._reshard_wanted_why = ""
        self.voices = VoiceFleet(
            config,
            runtime_dir,
            plan.shard_count,
            shard_state=lambda shard: self.shards.state_of(shard),
            send=self.wiring.send,
            publish=self.wiring.publish,
            control=self.endpoints.control,
            bus_in=self.endpoints.bus_in,
            preexec=_exit_with_parent,
        )
        self.app_fleet = AppFleet(
            config,
            {
                "SHARDLINE_EVENTS": self.endpoints.events,
                "SHARDLINE_COMMANDS": self.endpoints.commands,
                "SHARDLINE_SERVER_KEY": config.ipc.curve_public_key,
            },
            python=python,
            preexec=_exit_with_parent,
            placed=clustered,  # in a fleet, each app process runs on one host (appshare)
        )
        self.cluster: ClusterHost | None = None
        self.fleet_resharding: FleetResharding | None = None
        self.peer_commands: PeerCommands | None = None  # requests for other hosts' shards
        self._peers: dict[str, Peer] = {}
        self._served_by: dict[str, str] = {}  # custom command type -> a host serving it
        self._voice_at: dict[int, str] = {}  # guild -> the other host running its voice
        if clustered:
            from runtime.clusterhost import ClusterHost
            from runtime.clusterreshard import FleetResharding

            self.peer_commands = PeerCommands(
                self.wiring.ctx, config.cluster.host_name(), self.wiring.secure_client
            )
            self.cluster = ClusterHost(
                config.cluster,
                self.shards,
                token=token,
                shard_count=plan.shard_count,
                max_concurrency=plan.max_concurrency,
                remaining=plan.remaining,
                reset_after_ms=plan.reset_after_ms,
                identify_interval=identify_interval,
                about=self._about_this_host,
                meet=self._meet_hosts,
            )
            self.fleet_resharding = FleetResharding(self, self.cluster)
            self.cluster.after_turn = self.fleet_resharding.step
        self.desk = CommandDesk(time.monotonic)
        self._register_handlers()
        self.status_interval = status_interval
        self.progress = progress or (lambda line: log.info(line))
        self.started = time.monotonic()
        self.metrics: MetricsServer | None = None  # the /metrics listener, when configured
        self.fatal_message = ""
        self.resumed_from_disk = 0
        self.subscribers: dict[str, dict[str, Any]] = {}  # what each application reported
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # restarts the commands asked for

    # -- what tests and the demo look at ------------------------------------------------

    @property
    def workers(self) -> dict[int, ShardWorker]:
        return self.shards.workers

    @property
    def apps(self) -> list[AppWorker]:
        return self.app_fleet.apps

    @property
    def voice(self) -> dict[int, VoiceWorker]:
        return self.voices.sessions

    @property
    def allow_list(self) -> ClientAllowList | None:
        return self.wiring.allow_list

    async def restart_shard(self, shard: int) -> None:
        await self.shards.restart_shard(shard)

    async def rolling_restart(self) -> None:
        await self.shards.rolling_restart()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Run until ``stop`` is set, a CLI ``stop`` arrives, or a fatal error ends the fleet.
        Returns the process exit status (0 clean, 1 fatal)."""
        fresh = self._start()
        assert self.wiring.control is not None and self.wiring.commands is not None
        eta = startup_seconds(len(fresh), self.plan.max_concurrency, self.scheduler.interval)
        self.progress(
            f"starting {len(self.workers)} shards of {self.plan.shard_count} "
            f"(max_concurrency {self.plan.max_concurrency}): {self.resumed_from_disk} resume a "
            f"saved session, {len(fresh)} identify; identify bound {eta:.0f}s"
        )
        try:
            await self._listen_for_metrics()
            if self.cluster is not None:
                await self.cluster.start()
                await self._join_fleet_generation(self.cluster)
                self.progress(
                    f"joined fleet {self.config.cluster.fleet!r} as host "
                    f"{self.cluster.host!r}; shards follow the leases this host takes"
                )
            async with asyncio.TaskGroup() as tasks:
                readers = [
                    tasks.create_task(self._read_control(self.wiring.control, "a")),
                    tasks.create_task(self._read_commands(self.wiring.commands)),
                    tasks.create_task(self._tick()),
                    tasks.create_task(self._refresh_identify_budget()),
                ]
                if self.wiring.control_b is not None:
                    readers.append(
                        tasks.create_task(self._read_control(self.wiring.control_b, "b"))
                    )
                for worker in self.workers.values():
                    tasks.create_task(self.shards.keep_alive(worker))
                if self.cluster is not None:
                    tasks.create_task(self.cluster.run(self._stop))
                if self.config.shards.auto_reshard:
                    readers.append(tasks.create_task(self._auto_reshard()))
                for app in self.apps:
                    tasks.create_task(self.app_fleet.keep_alive(app))
                waiter = tasks.create_task(_wait_either(stop, self._stop))
                await waiter
                self._stop.set()  # from here on, an exiting worker is not respawned
                await self._shutdown()
                for task in [*readers, *self._tasks]:
                    task.cancel()
        finally:
            if self.metrics is not None:
                await self.metrics.close()
            if self.cluster is not None:
                await self.cluster.close()
            if self.peer_commands is not None:
                self.peer_commands.close()
            self.sessions.save()
            self.wiring.close()
            unlock_runtime_dir(self.runtime_dir, *self.endpoints.all())
        if self.fatal_message:
            self.progress(f"stopped: {self.fatal_message}")
            return 1
        self.progress("stopped; sessions saved for the next run to resume")
        return 0

    def _start(self) -> list[int]:
        """Lock the runtime dir, load the saved sessions, check the identify budget and
        open the sockets; returns the shards that must identify. StartupError says why not."""
        try:
            lock_runtime_dir(self.runtime_dir)
        except (UnsafeRuntimeDirError, AlreadyRunningError) as exc:
            raise StartupError(str(exc)) from None
        try:
            self.resumed_from_disk = self.sessions.load(self.plan.shard_count)
            fresh = [i for i in self.workers if self.sessions.get(i) is None]
            if len(fresh) > self.plan.remaining:
                hours = self.plan.reset_after_ms / 3_600_000
                raise StartupError(
                    f"Discord allows {self.plan.remaining} more identifies until its limit "
                    f"resets in {hours:.1f} h, and {len(fresh)} shards need one. Running out "
                    "would reset the bot's token. Wait for the reset, or start fewer shards "
                    "now (shards.ids)."
                )
            self.wiring.open()
        except (UnsafeRuntimeDirError, StartupError) as exc:
            unlock_runtime_dir(self.runtime_dir, *self.endpoints.all())
            raise StartupError(str(exc)) from None
        if self.wiring.allow_list is not None:  # our own apps use the supervisor's local key
            self.app_fleet.env["SHARDLINE_CLIENT_KEY"] = self.wiring.allow_list.local_secret
        self.scheduler.expect(fresh, time.monotonic())
        return fresh

    async def _listen_for_metrics(self) -> None:
        """Serve /metrics, /healthz and /readyz on ``[metrics] listen``, when set."""
        if not self.config.metrics.listen:
            return
        from prometheus_client.registry import CollectorRegistry

        from runtime.metrics import FleetCollector
        from runtime.metricsserver import MetricsServer

        host, port = parse_listen(self.config.metrics.listen)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            FleetCollector(
                self._local_status,
                lambda: {w.shard: w.totals for w in self.workers.values()},
                lambda: {str(g): v.totals for g, v in self.voices.sessions.items()},
            )
        )
        server = MetricsServer(registry, self.readiness)
        try:
            await server.start(host, port)
        except OSError as exc:
            raise StartupError(
                f"metrics.listen = {self.config.metrics.listen!r}: cannot listen there ({exc})"
            ) from None
        self.metrics = server
        assert server.address is not None
        shown = f"[{host}]" if ":" in host else host
        self.progress(f"metrics on http://{shown}:{server.address[1]}/metrics (and /readyz)")

    def _local_status(self) -> FleetStatus:
        """The status with only this host's shards (what its metrics describe)."""
        status = self.status()
        me = self.cluster.host if self.cluster is not None else ""
        local = [s for s in status.shards if s.host in ("", me)]
        return dataclasses.replace(status, shards=local)

    def readiness(self) -> tuple[bool, str]:
        """/readyz: every shard this supervisor owns is READY and the bus is serving."""
        waiting = sorted(w.shard for w in self.workers.values() if w.state is not ShardState.READY)
        if not self.wiring.bus_serving:
            return False, "not ready: the event bus is not running"
        if waiting:
            listed = ", ".join(map(str, waiting[:20])) + (", ..." if len(waiting) > 20 else "")
            return (
                False,
                f"not ready: {len(waiting)} of {len(self.workers)} shards not READY ({listed})",
            )
        return True, f"ready: {len(self.workers)} shards READY, bus serving"

    def request_stop(self, reason: str = "") -> None:
        if reason and not self.fatal_message:
            self.fatal_message = reason
        self._stop.set()

    async def _shutdown(self) -> None:
        """Applications first (they stop sending), then every shard closes resumably and
        checkpoints, then the voice sessions end."""
        apps = asyncio.ensure_future(self.app_fleet.shutdown())
        task = self._reshard_task
        if task is not None and not task.done():  # a reshard under way is called off
            self.reshard_problem = "the supervisor is stopping"
            self.reshard_abort.set()
            await asyncio.wait([task], timeout=30.0)
        await self.shards.shutdown()
        if self.fleet_resharding is not None:  # this host's new shards, for others to resume
            await self.fleet_resharding.shutdown()
        if self.cluster is not None:  # the final checkpoints go to Redis, then the leases
            await self.cluster.stop()
        await apps
        await self.voices.shutdown()

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

    def _place_apps(self, live: dict[str, dict[str, Any]], me: str) -> None:
        """Run here exactly this host's share of the fleet's application processes: stop
        those that moved away at once, start those that moved here once no other host says
        it runs them (so that no guild is handled twice)."""
        slots = app_slots((app.module, app.processes) for app in self.config.apps)
        mine = my_apps(slots, live, me)
        elsewhere = apps_running_elsewhere(live, me)
        running = {app.slot: app for app in self.apps if not app.retired}
        for slot, app in running.items():
            if slot not in mine:
                log.info(f"app {app.module}[{app.index}] moves to another host; stopping it here")
                self._background(self.app_fleet.retire(app), f"stopping app {app.module}")
        for slot in sorted(mine - running.keys()):
            if slot in elsewhere:
                continue  # its host stops it at its turn; started here at a later one
            app = self.app_fleet.add(slot)
            log.info(f"app {app.module}[{app.index}] of {app.count} runs on this host now")
            self._background(self.app_fleet.keep_alive(app), f"app {app.module}[{app.index}]")

    # -- control: what workers tell us ----------------------------------------------------

    async def _read_control(self, sock: zmq.asyncio.Socket, slot: str) -> None:
        """What the workers behind ``sock`` say: voice processes, and the shards of the
        generation on ``slot``."""
        while True:
            frames = await sock.recv_multipart()
            identity = frames[0].decode(errors="replace")[:64]
            try:
                message = decode_control(list(frames[1:]))
            except CodecError as exc:
                log.warning(
                    f"unreadable control message from {identity!r}: {exc}",
                    extra={"fields": {"worker": identity}},
                )
                continue
            kind, _, ident = identity.partition(":")
            if not ident.isdigit():
                continue
            if kind == "voice":
                self.voices.on_control(int(ident), message)
            elif kind == "shard":
                fleet = self.generations.get(slot)
                if fleet is None:
                    continue
                if isinstance(message, GatewayForward):
                    if slot == self.slot:  # voice follows the current generation only
                        await self.voices.on_forward(message)
                else:
                    fleet.on_control(int(ident), message)

    # -- periodic work --------------------------------------------------------------------

    async def _tick(self) -> None:
        last_progress = ""
        last_save = time.monotonic()
        while True:
            now = time.monotonic()
            for fleet in list(self.generations.values()):
                fleet.tick(now)
            self.voices.tick(now)
            for message in self.desk.expire():
                await self.wiring.commands.send_multipart(message)  # type: ignore[union-attr]
            line = self._progress_line()
            if line != last_progress:
                self.progress(line)
                last_progress = line
            if self.sessions.dirty and now - last_save > 5.0:
                self.sessions.save()
                last_save = now
            deadline = self.scheduler.next_deadline()
            wait = TICK if deadline is None else min(TICK, max(0.0, deadline - time.monotonic()))
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
        ready = sum(1 for w in self.workers.values() if w.state is ShardState.READY)
        total = len(self.workers)
        if ready == total:
            return f"shards ready {ready}/{total}"
        waiting = self.scheduler.waiting
        rounds = math.ceil(waiting / self.scheduler.max_concurrency)
        eta = rounds * self.scheduler.interval
        return f"shards ready {ready}/{total}, {waiting} waiting to identify, ETA {eta:.0f}s"

    # -- commands: what applications and the CLI ask -------------------------------------

    async def _read_commands(self, sock: zmq.asyncio.Socket) -> None:
        """Every request gets exactly one reply, whatever it holds (docs/wire.md). In a
        fleet, a request for another host's shard is answered by that host."""
        while True:
            frames = await sock.recv_multipart()
            forward = self._forward_target(frames)
            if forward is not None:
                request, host, shard = forward
                self._background(
                    self._forward(sock, frames[0], request, host, shard),
                    f"{request.type_name} forwarded to host {host}",
                )
                continue
            for message in await self.desk.receive(list(frames)):
                await sock.send_multipart(message)

    def _forward_target(self, frames: list[bytes]) -> tuple[RawRequest, str, int | None] | None:
        if self.cluster is None or self.cluster.coordinator is None or len(frames) < 2:
            return None
        request = decode_request(list(frames[1:]))
        if isinstance(request, tuple):
            return None  # the desk answers it with the error
        target = forward_target(
            request,
            self.plan.shard_count,
            self.workers,
            self.cluster.coordinator.owners,
            self.cluster.host,
            self._served_by,
            served_here=request.type_name in self.desk.served_types(),
            voice_here=self.voices.sessions,
            voice_at=self._voice_at,
        )
        return None if target is None else (request, target[0], target[2])

    async def _forward(
        self,
        sock: zmq.asyncio.Socket,
        identity: bytes,
        request: RawRequest,
        host: str,
        shard: int | None,
    ) -> None:
        """Hand ``request`` to the host that runs its shard now (asked of Redis: the view of
        the last turn may be a turn old), and its reply back to whoever asked."""
        from runtime.cluster.identify import ClusterUnavailable

        assert self.peer_commands is not None and self.cluster is not None
        coordinator = self.cluster.coordinator
        why = f"{request.type_name} is answered on host {host}"
        if shard is not None and coordinator is not None:
            with contextlib.suppress(ClusterUnavailable):  # else the last turn's view
                host = await coordinator.leases.owner(shard)
            why = f"shard {shard} runs on host {host}"
            if not host or host == self.cluster.host:  # nobody, or this host is starting it
                reply = ErrorReply.of(
                    ErrorCode.UNAVAILABLE,
                    f"shard {shard} is not running on any host right now (it is moving "
                    "between hosts or starting); the command was not sent",
                )
                await sock.send_multipart([identity, request.request_id, reply.encode()])
                return
        body = await self.peer_commands.forward(host, request, why)
        await sock.send_multipart([identity, request.request_id, body])

    # -- the fleet's hosts ----------------------------------------------------------------

    def _about_this_host(self) -> dict[str, Any]:
        """What the other hosts need to reach this one (published each turn)."""
        bus, commands = self.wiring.bus, self.wiring.commands
        if bus is None or commands is None:
            return {}
        name = self.config.cluster.advertise or self.config.cluster.host_name()
        bound = commands.getsockopt(zmq.LAST_ENDPOINT)
        return {
            **peer_info(
                advertised(bus.endpoint("peer_in"), name),
                advertised(bound.decode() if isinstance(bound, bytes) else str(bound), name),
                self.config.ipc.curve_public_key,
            ),
            "serves": self.desk.served_types()[:MAX_SERVED_TYPES],
            "apps": [list(app.slot) for app in self.apps if not app.retired],
            "app_records": [record.to_json() for record in self.app_fleet.records()],
            "voice": sorted(self.voices.sessions)[:MAX_PUBLISHED_VOICE],
        }

    async def _meet_hosts(self, live: dict[str, dict[str, Any]]) -> None:
        """Each turn, before any shard moves: this host's events go to every other live
        host (waiting until the bus has the links), its forwarded requests can reach them."""
        me = self.config.cluster.host_name()
        self._served_by = {
            name: host
            for host, entry in sorted(live.items())
            if host != me and isinstance(entry.get("serves"), list)
            for name in entry["serves"][:MAX_SERVED_TYPES]
            if isinstance(name, str)
        }
        if self.config.apps and not self._stop.is_set():
            self._place_apps(live, me)
        self._voice_at = {
            guild: host
            for host, entry in sorted(live.items())
            if host != me and isinstance(entry.get("voice"), list)
            for guild in entry["voice"][:MAX_PUBLISHED_VOICE]
            if type(guild) is int
        }
        peers = read_peers(live, me)
        if peers == self._peers or self.wiring.bus is None:
            return
        self._peers = peers
        applied = self.wiring.bus.set_peers({n: p.events for n, p in peers.items()})
        if self.peer_commands is not None:
            self.peer_commands.set_peers({n: p.commands for n, p in peers.items()})
        if not await asyncio.to_thread(applied.wait, 5.0):
            log.warning("the event bus did not open its links to the other hosts within 5s")

    def _register_handlers(self) -> None:
        """The handler table: one handler per command class (voice commands: VoiceFleet)."""
        desk = self.desk
        desk.handle(GetStatus, self._on_status)
        desk.handle(ReportClientStats, self._on_client_stats)
        desk.handle(StopFleet, self._on_stop)
        desk.handle(RestartShards, self._on_restart)
        desk.handle(GatewayCommand, self._on_gateway_command)
        desk.handle(Reshard, self._on_reshard)
        desk.handle(Deploy, self._on_deploy)
        self.voices.register(desk)

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
            self._background(self.shards.rolling_restart(), "rolling restart")
            return Restarting(restarting=sorted(self.workers))
        shard = command.shard
        if shard not in self.workers:
            return ErrorReply.of(
                ErrorCode.UNROUTABLE,
                f"no shard {shard!r} on this host (shards: {sorted(self.workers)})",
            )
        self._background(self.shards.restart_shard(shard), f"restart of shard {shard}")
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
        state = self.workers[routed].state
        if state is not ShardState.READY:
            return ErrorReply.of(
                ErrorCode.UNAVAILABLE,
                f"shard {routed} is down ({state}); the command was not sent",
            )
        self.wiring.send(f"shard:{routed}", command)
        return Routed(routed=f"shard:{routed}")

    # -- deploying new application code (docs/resharding.md) --------------------------------

    async def _on_deploy(self, command: Deploy, options: Options) -> Reply:
        """This host's application processes, and in a fleet every other host's too (the
        request goes on to each, once): each host replaces its own, one at a time."""
        if self._deploy_task is not None and not self._deploy_task.done():
            return ErrorReply.of(ErrorCode.UNAVAILABLE, "a deploy is under way")
        apps = [app for app in self.apps if app.proc is not None and not app.retired]
        names = [f"{app.module}[{app.index}]" for app in apps]
        if self.peer_commands is not None and VIA not in options:
            names += await self._deploy_elsewhere()
        if not names:
            return ErrorReply.of(ErrorCode.UNAVAILABLE, "no application process runs here")
        if apps:
            self._deploy_task = asyncio.get_running_loop().create_task(self._deploy(apps))
        return Deploying(apps=names)

    async def _deploy_elsewhere(self) -> list[str]:
        """``shardline.deploy`` handed to every other live host; the processes they replace
        (a host that cannot is logged, and its processes are left as they are)."""
        assert self.peer_commands is not None
        request = RawRequest(b"", Deploy.type_name, {}, {}, b"{}")
        hosts = sorted(self._peers)
        bodies = await asyncio.gather(
            *(self.peer_commands.forward(h, request, f"host {h} runs apps") for h in hosts)
        )
        names: list[str] = []
        for host, body in zip(hosts, bodies, strict=True):
            reply = Reply.decode(body, Deploying)
            if isinstance(reply, Deploying):
                names += [str(a) for a in reply.raw.get("apps", [])][:MAX_SUBSCRIBERS]
            elif "no application process" not in str(reply.raw.get("message", "")):
                log.warning(f"deploy: host {host} does not deploy: {reply.raw}")
        return names

    async def _deploy(self, apps: list[AppWorker]) -> None:
        """One application process at a time: its replacement subscribed, then it stops."""

        def subscribed(pid: int) -> bool:
            return any(s.name.endswith(f":{pid}") for s in self.wiring.subscribers())

        for n, app in enumerate(apps, 1):
            before = app.proc.pid if app.proc is not None else None
            why = await self.app_fleet.replace(app, subscribed)
            after = app.proc.pid if app.proc is not None else None
            what = f"app {app.module}[{app.index}]"
            if why:
                self.progress(f"deploy: {n} of {len(apps)}: {what} not replaced: {why}")
            else:
                self.progress(
                    f"deploy: {n} of {len(apps)}: {what} replaced (pid {before} -> {after})"
                )

    # -- resharding (docs/resharding.md) ---------------------------------------------------

    async def _on_reshard(self, command: Reshard, options: Options) -> Reply:
        if self.fleet_resharding is not None:  # the whole fleet, through Redis
            if command.abort:
                return await self.fleet_resharding.abort("aborted on request")
            return await self.fleet_resharding.request(command.count, dry_run=command.dry_run)
        running = self._reshard_task is not None and not self._reshard_task.done()
        if command.abort:
            if not running or self.reshard_status is None:
                return ErrorReply.of(ErrorCode.INVALID, "no reshard is under way")
            self.reshard_problem = "aborted on request"
            self.reshard_abort.set()
            status = self.reshard_status
            return ReshardPlan(
                current=status.current,
                target=status.target,
                identifies=status.target,
                remaining=self.scheduler.remaining,
                eta=status.eta,
                started=False,
            )
        return self._start_reshard(command.count, dry_run=command.dry_run)

    def _start_reshard(self, count: int, *, dry_run: bool) -> Reply:
        """Check a reshard to ``count``; start it unless ``dry_run``. The plan, or why not."""
        running = self._reshard_task is not None and not self._reshard_task.done()
        busy = ""
        if running and self.reshard_status is not None:
            busy = f"a reshard to {self.reshard_status.target} shards is under way"
        elif self._stop.is_set():
            busy = "the supervisor is stopping"
        checked = check_reshard(
            self.plan.shard_count,
            count,
            multiple=shard_multiple(self.config.shards.multiple_of, self.plan.max_concurrency),
            remaining=self.scheduler.remaining,
            max_concurrency=self.plan.max_concurrency,
            interval=self.scheduler.interval,
            busy=busy,
        )
        if isinstance(checked, str):
            return ErrorReply.of(ErrorCode.UNAVAILABLE, checked)
        if not dry_run:
            self.reshard_abort.clear()
            self.reshard_problem = ""
            self.reshard_status = reshard_record(checked, 0, "starting")
            self._reshard_task = asyncio.get_running_loop().create_task(self._reshard(checked))
        return plan_reply(checked, started=not dry_run)

    async def _reshard(self, target: ReshardTarget) -> None:
        """Start the new generation beside the running one, switch the applications to it
        once every new shard is READY with its guilds, then close the old one. Aborted
        (request, a new shard failing fatally, the staging buffer full, shutdown), the new
        generation goes and the running one is untouched."""
        bus = self.wiring.bus
        assert bus is not None
        old_slot, slot = self.slot, self.other_slot
        old, count = self.shards, target.target
        fleet = self.new_generation(count, tuple(range(count)))
        view = fleet.scheduler
        assert isinstance(view, ScheduleView)
        limit = self.config.bus.subscriber_buffer_bytes
        await asyncio.to_thread(bus.reshard("begin", old_slot, limit).wait, 5.0)
        self.generations[slot] = fleet
        for worker in fleet.workers.values():  # owned like a restart: cancelled at shutdown
            self._background(fleet.keep_alive(worker), f"new shard {worker.shard}")
        self.progress(
            f"reshard: starting {count} shards beside the {old.shard_count} running "
            f"(identify bound {target.eta:.0f}s); the applications switch when all are READY"
        )
        switched = False
        try:
            switched = await self._until_ready(fleet, target, bus)
            if switched:
                await self._switch(fleet, target, bus)
        finally:
            if not switched:
                self.reshard_status = reshard_record(target, 0, "aborted", self.reshard_problem)
                self.progress(f"reshard to {count} aborted: {self.reshard_problem}")
                await asyncio.to_thread(bus.reshard("abort").wait, 5.0)
                await fleet.shutdown()
                self.generations.pop(slot, None)
                view.close(list(fleet.workers))
            else:
                await old.shutdown()
                self.generations.pop(old_slot, None)
                if isinstance(old.scheduler, ScheduleView):
                    old.scheduler.close(list(old.workers))
                self.reshard_status = reshard_record(target, count, "done")
                self.progress(f"reshard: generation of {old.shard_count} closed")
            await asyncio.to_thread(bus.reshard("finish").wait, 5.0)

    async def _join_fleet_generation(self, cluster: ClusterHost) -> None:
        """A fleet resharded before this host joined runs the count Redis says, whatever
        the configuration or Discord's recommendation."""
        generation = cluster.generation
        bus = self.wiring.bus
        if bus is not None and generation.space:
            await asyncio.to_thread(bus.set_generation(generation.space.encode()).wait, 5.0)
        if generation.count == self.plan.shard_count:
            return
        log.warning(
            f"fleet {self.config.cluster.fleet!r} was resharded to {generation.count} shards: "
            f"this host runs {generation.count}, not {self.plan.shard_count}"
        )
        self.plan = dataclasses.replace(
            self.plan, shard_count=generation.count, shard_ids=tuple(range(generation.count))
        )
        self.shards.shard_count = generation.count
        self.voices.shard_count = generation.count

    @property
    def other_slot(self) -> str:
        """The slot a reshard's next generation runs on (the current one's other)."""
        return "b" if self.slot == "a" else "a"

    def new_generation(self, count: int, shard_ids: tuple[int, ...]) -> ShardFleet:
        """A reshard's next generation of ``count`` shards on the other slot (its own
        control socket and bus input, the identify schedule shared): ``shard_ids`` to start
        (none in a fleet: they come with the leases)."""
        slot = self.other_slot
        control = self.wiring.control_b if slot == "b" else self.wiring.control
        return ShardFleet(
            self.config,
            shard_ids,
            count,
            self.plan.gateway_url,
            token=self.token,
            scheduler=ScheduleView(self.scheduler, 1 if slot == "b" else 0, self._grants),
            sessions=SessionStore(self.runtime_dir / f"sessions-{slot}.json"),
            spawner=self._spawner(self._python, _exit_with_parent),
            send=lambda who, message: self.wiring.send_on(control, who, message),
            stop_fleet=lambda reason: self._shard_fatal(slot, reason),
            bus_in=self.endpoints.bus_in_b if slot == "b" else self.endpoints.bus_in,
            control=self.endpoints.control_b if slot == "b" else self.endpoints.control,
        )

    def adopt_generation(self, fleet: ShardFleet, count: int) -> int:
        """``fleet`` (on the other slot) is the fleet's generation from now on; returns the
        count it replaces."""
        slot = self.other_slot
        old_count = self.plan.shard_count
        self.slot, self.shards = slot, fleet
        self.wiring.shard_control = self.wiring.control_b if slot == "b" else self.wiring.control
        self.plan = dataclasses.replace(self.plan, shard_count=count, shard_ids=tuple(range(count)))
        self.voices.shard_count = count
        fleet.sessions.path = self.runtime_dir / "sessions.json"  # the next start resumes it
        fleet.sessions.dirty = True
        self.sessions = fleet.sessions
        return old_count

    async def _until_ready(self, fleet: ShardFleet, target: ReshardTarget, bus: Any) -> bool:
        """Wait for every new shard READY with its guilds (progress each change); False
        when the reshard is to be aborted."""
        ready_since: dict[int, float] = {}
        started, shown = time.monotonic(), -1
        while not self.reshard_abort.is_set():
            now = time.monotonic()
            if bus.cutover_overflowed:
                self.reshard_problem = (
                    "the new generation's events outgrew bus.subscriber_buffer_bytes before "
                    "it was ready"
                )
                return False
            shards = []
            for shard, worker in fleet.workers.items():
                state = worker.state
                if state is ShardState.READY:
                    ready_since.setdefault(shard, now)
                else:
                    ready_since.pop(shard, None)
                pending = worker.report.guilds_pending if worker.report is not None else 0
                shards.append((state, pending, ready_since.get(shard)))
            ready, every = ready_to_switch(shards, now)
            self.reshard_status = reshard_record(target, ready, "starting")
            eta = max(0.0, target.eta - (now - started))
            if ready != shown:
                self.progress(f"reshard: {ready} shards ready of {target.target}, ETA {eta:.0f}s")
                shown = ready
            if every:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reshard_abort.wait(), 0.25)
        return False

    async def _switch(self, fleet: ShardFleet, target: ReshardTarget, bus: Any) -> None:
        """The applications get the new generation from now on; it becomes the fleet."""
        await asyncio.to_thread(bus.reshard("switch").wait, 5.0)
        old_count = self.adopt_generation(fleet, target.target)
        self.wiring.publish(Resharded(old_count=old_count, new_count=target.target))
        self.reshard_status = reshard_record(target, target.target, "switched")
        configured = self.config.shards.count
        keep = (
            f"; set shards.count = {target.target} in the config to keep it at the next start"
            if configured is not None and configured != target.target
            else ""
        )
        self.progress(f"reshard: switched to {target.target} shards (from {old_count}){keep}")

    def _shard_fatal(self, slot: str, reason: str) -> None:
        """A shard of the generation on ``slot`` failed fatally. A reshard's new shard: the
        reshard is called off (the fleet runs on). A 4011 with auto_reshard: a larger count.
        Anything else: the fleet stops with the shard's advice."""
        if slot != self.slot:
            self.reshard_problem = f"a new shard failed: {reason}"
            self.reshard_abort.set()
            return
        fleet = self.generations.get(slot)
        sharding = fleet is not None and any(
            w.fatal_code == SHARDING_REQUIRED for w in fleet.workers.values()
        )
        if sharding and self.config.shards.auto_reshard:
            log.warning(f"{reason}; resharding to a larger count (shards.auto_reshard)")
            self._reshard_wanted_why = "Discord closed a shard with 4011 (sharding required)"
            self._reshard_wanted.set()
            return
        self.request_stop(reason)

    async def _auto_reshard(self) -> None:
        """``shards.auto_reshard``: every ``auto_reshard_interval`` seconds (and at once
        after a 4011), reshard when Discord recommends more shards than run (to its count),
        or a shard holds 80% of 2,500 guilds, or a shard was closed 4011 (to twice the
        count); a multiple of the large-bot factor either way."""
        every = self.config.shards.auto_reshard_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reshard_wanted.wait(), every)
            why, self._reshard_wanted_why = self._reshard_wanted_why, ""
            self._reshard_wanted.clear()
            if self._reshard_task is not None and not self._reshard_task.done():
                continue
            try:
                info = await asyncio.to_thread(
                    fetch_gateway_bot, self.config.discord.rest_url, self.token
                )
            except RestError as exc:
                log.warning(f"auto_reshard: cannot ask GET /gateway/bot: {exc}")
                continue
            current = self.plan.shard_count
            multiple = shard_multiple(self.config.shards.multiple_of, self.plan.max_concurrency)
            target = round_up(info.shards, multiple)
            if target > current:
                why = why or f"Discord recommends {info.shards} shards ({current} run)"
            busiest = max(
                (w.report.guilds for w in self.workers.values() if w.report is not None),
                default=0,
            )
            if busiest >= CROWDED_SHARD:
                why = why or f"a shard holds {busiest} guilds (Discord allows 2,500)"
            if why and target <= current:
                target = round_up(current * 2, multiple)
            if not why:
                continue
            if self.fleet_resharding is not None:  # the whole fleet (any host may start it)
                reply = await self.fleet_resharding.request(target, dry_run=False)
            else:
                reply = self._start_reshard(target, dry_run=False)
            if isinstance(reply, ErrorReply):
                log.error(
                    f"auto_reshard: {why}, but resharding to {target} is refused: {reply.error}"
                )
            else:
                self.progress(f"auto_reshard: {why}: resharding to {target} shards")

    def _forget_quiet_subscribers(self) -> None:
        """Keep client_stats bounded: drop reports older than 10 s, else the oldest."""
        now = time.monotonic()
        for name in [k for k, v in self.subscribers.items() if now - v["at"] >= 10]:
            del self.subscribers[name]
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            del self.subscribers[min(self.subscribers, key=lambda k: self.subscribers[k]["at"])]

    # -- status ---------------------------------------------------------------------------

    def status(self) -> FleetStatus:
        """This host's status; in a multi-host fleet, the whole fleet's as this host last saw
        it (every host, each shard with its host, the fleet's budget)."""
        now = time.monotonic()
        shards = local_records = self.shards.records(now)
        hosts: list[HostRecord] = []
        budget: BudgetRecord | None = None
        remaining = self.scheduler.remaining
        apps = self.app_fleet.records()
        if self.cluster is not None:
            hosts, remote, budget = self.cluster.view()
            local = [dataclasses.replace(r, host=self.cluster.host) for r in shards]
            shards = sorted([*local, *remote], key=lambda r: r.id)
            mine = [dataclasses.replace(r, host=self.cluster.host) for r in apps]
            apps = sorted([*mine, *self.cluster.remote_apps()], key=lambda r: r.index)
            if budget is not None and budget.remaining is not None:
                remaining = budget.remaining
        live = {k: v for k, v in self.subscribers.items() if now - v["at"] < 10}
        subscribers = self.wiring.subscribers()
        bus = BusRecord(
            subscribers_reporting=len(live),
            subscriber_gaps=sum(v["gaps"] for v in live.values()),
            shard_drops=sum(s.dropped for s in local_records),
            subscriber_drops=sum(s.dropped for s in subscribers),
            subscribers=subscribers,
            paused=self.wiring.bus is not None and self.wiring.bus.paused,
        )
        return FleetStatus(
            bus=bus,
            shard_count=self.plan.shard_count,
            identifies_remaining=remaining,
            uptime=round(now - self.started, 1),
            shards=shards,
            apps=apps,
            voice=self.voices.records(),
            hosts=hosts,
            budget=budget,
            cluster_problem=self.cluster.problem if self.cluster is not None else "",
            reshard=self.reshard_status,
        )


async def _wait_either(first: asyncio.Event | None, second: asyncio.Event) -> None:
    """Return when either event is set (``first`` may be absent)."""
    waits = [asyncio.ensure_future(second.wait())]
    if first is not None:
        waits.append(asyncio.ensure_future(first.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
