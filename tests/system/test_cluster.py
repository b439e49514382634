"""Several supervisors on this machine, each with its own runtime dir as its own host, one
fleet through a real redis-server, against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq
import zmq.asyncio

from emulator import Emulator
from ipc.client import Client, CommandError, request_sync, secure
from ipc.codec import Envelope
from ipc.commands import RequestGuildMembers
from ipc.events import MessageCreate
from ipc.messages import Routed
from ipc.requests import GetStatus, StatusReply
from runtime.config import parse_config
from runtime.supervisor import Supervisor
from tests.redisserver import RedisServer
from tests.shards.helpers import eventually
from tests.system.test_supervisor import emulator, fleet_with

pytestmark = pytest.mark.slow

SHARDS = 6


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def host_config(
    emu: Emulator,
    redis: RedisServer,
    root: Path,
    name: str,
    apps: int = 0,
    voice: bool = False,
    ipc: dict[str, Any] | None = None,
    shards: dict[str, Any] | None = None,
    app_module: str = "examples.bot",
    **cluster: Any,
) -> Any:
    intents = ["guilds", "guild_messages"] + (["guild_voice_states"] if voice else [])
    discord = {"rest_url": emu.rest_url}
    if voice:
        assert emu.voice is not None
        discord["ca_file"] = emu.voice.ca_file  # the emulator's voice certificate
    return parse_config(
        {
            "apps": [{"module": app_module, "processes": apps}] if apps else [],
            "discord": discord,
            "shards": {"intents": intents, **(shards or {})},
            "ipc": ipc or {"runtime_dir": str(root / name)},
            "restart": {"backoff_initial": 0.1, "hang_timeout": 5.0},
            "log": {"level": "warning"},
            "cluster": {
                "redis_url": redis.url,
                "fleet": "bot",
                "host": name,
                "lease_ttl": 3,
                **cluster,
            },
        }
    )


@asynccontextmanager
async def hosts(
    emu: Emulator,
    redis: RedisServer,
    root: Path,
    names: list[str],
    apps: int = 0,
    app_module: str = "examples.bot",
    **shards: Any,
) -> AsyncIterator[dict[str, Supervisor]]:
    async with AsyncExitStack() as stack:
        running = {}
        for name in names:
            config = host_config(emu, redis, root, name, apps, shards=shards, app_module=app_module)
            running[name] = await stack.enter_async_context(fleet_with(config, emu, root / name))
        yield running


def ready_everywhere(running: dict[str, Supervisor], count: int = SHARDS) -> bool:
    ready = [
        s for sup in running.values() for s, w in sup.workers.items() if w.state.value == "ready"
    ]
    return sorted(ready) == list(range(count))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class FleetKeys:
    """The [ipc] keypair the fleet's hosts share, and an application's."""

    public: str
    secret: str
    app_public: str
    app_secret: str

    @classmethod
    def new(cls) -> FleetKeys:
        public, secret = (k.decode() for k in zmq.curve_keypair())
        app_public, app_secret = (k.decode() for k in zmq.curve_keypair())
        return cls(public, secret, app_public, app_secret)


def tcp_ipc(root: Path, name: str, keys: FleetKeys) -> dict[str, Any]:
    """A host whose events, commands and peer endpoint are tcp:// with CURVE, as across
    machines."""
    return {
        "runtime_dir": str(root / name),
        "events": f"tcp://127.0.0.1:{free_port()}",
        "commands": f"tcp://127.0.0.1:{free_port()}",
        "curve_public_key": keys.public,
        "curve_secret_key": keys.secret,
        "client_public_keys": [keys.app_public],
    }


@asynccontextmanager
async def tcp_hosts(
    emu: Emulator, redis: RedisServer, root: Path, names: list[str], keys: FleetKeys
) -> AsyncIterator[dict[str, Supervisor]]:
    async with AsyncExitStack() as stack:
        running = {}
        for name in names:
            config = host_config(
                emu,
                redis,
                root,
                name,
                ipc=tcp_ipc(root, name, keys),
                peer_listen=f"tcp://127.0.0.1:{free_port()}",
            )
            running[name] = await stack.enter_async_context(fleet_with(config, emu, root / name))
        yield running


def counting_client(
    events: str, commands: str, keys: FleetKeys, dedupe: bool = False
) -> tuple[Client, dict[int, int]]:
    """An application (the test's key) that counts the MESSAGE_CREATEs it handles per shard."""
    client = Client(
        events, commands, dedupe=dedupe, server_key=keys.public, client_key=keys.app_secret
    )
    counts: dict[int, int] = {}

    @client.on(MessageCreate)
    def count(event: MessageCreate) -> None:
        shard = (int(event.raw["guild_id"]) >> 22) % SHARDS
        counts[shard] = counts.get(shard, 0) + 1

    return client, counts


def applications(sup: Supervisor) -> int:
    """The host's bus subscribers that are applications (not links to other hosts)."""
    return sum(1 for s in sup.wiring.subscribers() if not s.name.startswith("host:"))


def linked(running: dict[str, Supervisor]) -> bool:
    """Every host pushes its events to every other host."""
    return all(
        sup.wiring.bus is not None and set(sup.wiring.bus.links) == set(running) - {name}
        for name, sup in running.items()
    )


async def test_an_app_on_one_host_gets_every_hosts_events_and_its_commands_reach_the_owner(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    keys = FleetKeys.new()
    async with emulator(shards=SHARDS, max_concurrency=2) as emu:
        async with tcp_hosts(emu, redis_server, tmp_path, ["a", "b", "c"], keys) as running:
            await eventually(lambda: ready_everywhere(running), timeout=60)
            await eventually(lambda: linked(running), timeout=10)
            a = running["a"]
            client, counts = counting_client(a.endpoints.events, a.endpoints.commands, keys)

            client.connect([b"MESSAGE_CREATE"])
            reader = asyncio.create_task(client.run())
            try:
                await eventually(lambda: applications(a) == 1, timeout=10)
                streams = [emu.stream(shard, rate=100, count=50) for shard in range(SHARDS)]
                await asyncio.gather(*streams)
                everyone = dict.fromkeys(range(SHARDS), 50)
                await eventually(lambda: counts == everyone, timeout=20)
                # a command for a guild whose shard runs on another host: sent by that host
                remote = next(s for s in running["b"].workers)
                guild = emu.gateway.guilds_on(remote, SHARDS)[0]
                reply = await client.send(
                    RequestGuildMembers(guild_id=guild, user_ids=[1], nonce="far")
                )
                assert isinstance(reply, Routed) and reply.routed == f"shard:{remote}"
                await eventually(
                    lambda: any(r.d.get("nonce") == "far" for r in emu.received(remote, op=8)),
                    timeout=10,
                )
                # an application's key reads events and sends commands, but may not push
                # events into the fleet as if it were a host; the hosts' keypair may
                bus, allow_list = a.wiring.bus, a.allow_list
                assert bus is not None and allow_list is not None
                guild = emu.gateway.guilds_on(0, SHARDS)[0]
                envelope = Envelope("shard:0", "dispatch", "forged", 1, time.time_ns()).encode()
                body = orjson.dumps(
                    {"t": "MESSAGE_CREATE", "s": 1, "op": 0, "d": {"guild_id": str(guild)}}
                )
                refused = allow_list.refused
                for secret in (keys.app_secret, keys.secret):
                    pusher = zmq.asyncio.Context.instance().socket(zmq.PUSH)
                    pusher.setsockopt(zmq.LINGER, 0)
                    secure(pusher, keys.public, secret)
                    pusher.connect(bus.endpoint("peer_in"))
                    await pusher.send_multipart([b"MESSAGE_CREATE ", envelope, body])
                    if secret == keys.app_secret:
                        await eventually(lambda: allow_list.refused > refused, timeout=10)
                    else:
                        await eventually(lambda: counts[0] == 51, timeout=10)
                    pusher.close()
                assert counts == {**everyone, 0: 51}  # the forged one once: the host key's
            finally:
                reader.cancel()
                client.close()
            assert client.gaps == 0


def app_processes(running: dict[str, Supervisor]) -> dict[str, list[int]]:
    """The [[apps]] process indexes each host runs."""
    return {
        name: sorted(a.index for a in sup.apps if a.proc is not None and not a.retired)
        for name, sup in running.items()
    }


async def test_app_processes_split_the_guilds_fleet_wide_and_answer_each_ping_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """examples.bot with processes = 2 on two hosts: 2 processes in the fleet, one per host,
    each handling half the guilds of every shard; a ping in any guild is answered once,
    through the host that runs its shard."""
    async with emulator(shards=4, max_concurrency=2) as emu:
        async with AsyncExitStack() as stack:
            running = {}
            for name in ("a", "b"):
                config = host_config(emu, redis_server, tmp_path, name, apps=2)
                running[name] = await stack.enter_async_context(
                    fleet_with(config, emu, tmp_path / name)
                )
            await eventually(lambda: ready_everywhere(running, 4), timeout=60)

            def settled() -> bool:  # the shares reached, and no shard moving
                shares = [len(sup.workers) for sup in running.values()]
                return shares == [2, 2] and ready_everywhere(running, 4)

            await eventually(settled, timeout=60)
            await eventually(lambda: app_processes(running) == {"a": [0], "b": [1]}, timeout=20)
            await eventually(lambda: all(applications(s) == 1 for s in running.values()), 20)
            await eventually(lambda: linked(running), timeout=10)
            guilds = [emu.gateway.guilds_on(shard, 4)[0] for shard in range(4)]
            for guild in guilds:
                await emu.message(guild, "!ping")
            await emu.wait_until(lambda: len(emu.received(op=3)) >= len(guilds), timeout=20)
            last = emu.world.guild_ids[-1]
            await emu.message(last, "!ping")  # one more, answered after the others
            await emu.wait_until(lambda: len(emu.received(op=3)) >= len(guilds) + 1, timeout=20)
            presences = emu.received(op=3)
            assert len(presences) == len(guilds) + 1  # each ping answered exactly once
            assert {r.shard_id for r in presences} == {0, 1, 2, 3}  # by the owning shard
            # one host leaves: the other runs both processes
            await stack.aclose()
        async with hosts(emu, redis_server, tmp_path, ["a"], apps=2) as alone:
            await eventually(lambda: app_processes(alone) == {"a": [0, 1]}, timeout=20)


async def test_voice_commands_sent_to_one_host_reach_the_host_that_runs_the_session(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with emulator(shards=2, max_concurrency=2) as emu:
        assert emu.voice is not None
        async with AsyncExitStack() as stack:
            running = {}
            for name in ("a", "b"):
                config = host_config(emu, redis_server, tmp_path, name, voice=True)
                running[name] = await stack.enter_async_context(
                    fleet_with(config, emu, tmp_path / name)
                )
            a, b = running["a"], running["b"]
            await eventually(lambda: len(a.workers) == len(b.workers) == 1, timeout=60)
            await eventually(lambda: ready_everywhere(running, 2) and linked(running), timeout=60)
            (shard,) = b.workers
            guild = emu.gateway.guilds_on(shard, 2)[0]
            pcm = tmp_path / "tone.pcm"
            pcm.write_bytes(bytes(3840 * 10))  # 10 frames of silence, s16le stereo
            client = Client(a.endpoints.events, a.endpoints.commands)  # host a's
            try:
                reply = await client.join_voice(guild, emu.world.voice_channel_id(guild))
                assert isinstance(reply, Routed) and reply.routed == f"shard:{shard}"
                await eventually(
                    lambda: [v["state"] for v in b.status().to_json()["voice"]] == ["connected"],
                    timeout=30,
                )
                assert a.voice == {} and guild in b.voice  # the session runs on b
                reply = await client.play(guild, str(pcm))
                assert isinstance(reply, Routed) and reply.routed == f"voice:{guild}"
                await emu.voice.wait_until(
                    lambda: any(len(r.packets) >= 5 for r in emu.voice.sessions.values())
                )
                await client.leave_voice(guild)
                await eventually(lambda: b.voice == {}, timeout=10)
            finally:
                client.close()


async def test_hosts_share_the_shards_identify_once_and_resume_on_the_next_start(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with emulator(shards=SHARDS, max_concurrency=2) as emu:
        async with hosts(emu, redis_server, tmp_path, ["a", "b", "c"]) as running:
            await eventually(lambda: ready_everywhere(running), timeout=60)
            assert sorted(len(s.workers) for s in running.values()) == [2, 2, 2]

            # any host's status shows the whole fleet (as of its last turn)
            def seen_by_a() -> bool:  # as of a's last turn, once one saw the shares reached
                status = running["a"].status()
                budget = status.budget.remaining if status.budget is not None else None
                return (
                    len(status.shards) == SHARDS
                    and all(h.reachable and len(h.shards) == 2 for h in status.hosts)
                    and budget == 1000 - SHARDS
                )

            await eventually(seen_by_a, timeout=10)
            status = running["a"].status()
            assert {s.host for s in status.shards} == {"a", "b", "c"}
            assert [h.name for h in status.hosts] == ["a", "b", "c"]
            assert status.budget is not None and status.budget.remaining == 1000 - SHARDS
            assert status.cluster_problem == ""
        identifies = emu.gateway.identifies
        assert len(identifies) == SHARDS and all(r.outcome == "ready" for r in identifies)
        # the same fleet again: every shard resumes, on whichever host holds it now
        async with hosts(emu, redis_server, tmp_path, ["a", "b", "c"]) as running:
            await eventually(lambda: ready_everywhere(running), timeout=60)
        assert len(emu.gateway.identifies) == SHARDS


class HostProcess:
    """``shardline run`` as its own process group, as one host of the fleet."""

    def __init__(
        self,
        emu: Emulator,
        redis: RedisServer,
        root: Path,
        name: str,
        interval: float = 0.3,
        keys: FleetKeys | None = None,
    ) -> None:
        self.name = name
        self.runtime_dir = root / name
        self.keys = keys
        config = root / f"{name}.toml"
        ipc = f'runtime_dir = "{self.runtime_dir}"\n'
        peer = ""
        self.events = f"ipc://{self.runtime_dir}/events.sock"
        self.commands = f"ipc://{self.runtime_dir}/commands.sock"
        if keys is not None:  # tcp:// with CURVE everywhere, as across machines
            table = tcp_ipc(root, name, keys)
            self.events, self.commands = table["events"], table["commands"]
            ipc += "".join(
                f"{key} = {json.dumps(value)}\n"
                for key, value in table.items()
                if key != "runtime_dir"
            )
            peer = f'peer_listen = "tcp://127.0.0.1:{free_port()}"\n'
        config.write_text(
            f'[discord]\nrest_url = "{emu.rest_url}"\n'
            '[shards]\nintents = ["guilds", "guild_messages"]\n'
            f"[ipc]\n{ipc}"
            '[restart]\nbackoff_initial = 0.1\n[log]\nlevel = "warning"\n'
            f'[cluster]\nredis_url = "{redis.url}"\nfleet = "bot"\nhost = "{name}"\n'
            f"lease_ttl = 3\n{peer}"
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime.cli",
                "run",
                "--config",
                str(config),
                "--identify-interval",
                str(interval),
            ],
            env={**os.environ, "DISCORD_TOKEN": emu.rules.token},
            start_new_session=True,  # its own process group: killed whole, like a host
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def status(self) -> dict[str, Any]:
        """``shardline status --json`` of this host ({} while it does not answer)."""
        keys = self.keys
        try:
            reply = request_sync(
                self.commands,
                GetStatus(),
                2.0,
                keys.public if keys else None,
                keys.app_secret if keys else None,
            )
        except CommandError:
            return {}
        return reply.status if isinstance(reply, StatusReply) else {}

    def ready_shards(self) -> set[int]:
        """The shards this host runs READY (none while it does not answer)."""
        shards = self.status().get("shards", [])  # the whole fleet's: keep this host's own
        return {s["id"] for s in shards if s["state"] == "ready" and s["host"] == self.name}

    def subscribers(self) -> set[str]:
        """The names of this host's bus subscribers: applications, and ``host:X`` links."""
        return {s["name"] for s in self.status().get("bus", {}).get("subscribers", [])}

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone: nothing to continue
            os.killpg(self.proc.pid, signal.SIGCONT)

    def kill_host(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def ready_union(running: list[HostProcess]) -> set[int]:
    return set().union(*(host.ready_shards() for host in running))


def shared(running: list[HostProcess], count: int) -> bool:
    """Every shard READY and the shares reached (``count / hosts`` each): no move under way."""
    held = [host.ready_shards() for host in running]
    return set().union(*held) == set(range(count)) and all(
        len(h) == count // len(running) for h in held
    )


async def test_a_killed_hosts_shards_are_resumed_by_the_others_and_an_app_loses_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    keys = FleetKeys.new()
    ttl = 3.0
    async with emulator(shards=SHARDS, max_concurrency=2) as emu:
        names = ("a", "b", "c")
        running = [HostProcess(emu, redis_server, tmp_path, n, keys=keys) for n in names]
        client, handled = counting_client(running[0].events, running[0].commands, keys, dedupe=True)

        reader: asyncio.Task[None] | None = None
        try:
            await eventually(lambda: shared(running, SHARDS), timeout=90)
            client.connect()
            reader = asyncio.create_task(client.run())
            # the app on host a, and every host pushing its events to every other
            await eventually(lambda: client.name in running[0].subscribers(), timeout=10)
            for host in running:
                others = {f"host:{n}" for n in names if n != host.name}
                await eventually(lambda: others <= host.subscribers(), timeout=10)  # noqa: B023
            victim = running[1]
            lost = victim.ready_shards()
            assert len(lost) == 2
            streams = [emu.stream(shard, rate=100, count=300) for shard in range(SHARDS)]
            await eventually(lambda: sum(handled.values()) >= 300, timeout=10)
            victim.kill_host()  # its supervisor and whole process group, mid-stream
            survivors = [running[0], running[2]]
            await eventually(lambda: ready_union(survivors) == set(range(SHARDS)), timeout=60)
            await asyncio.gather(*streams)
            # every message of every shard handled exactly once, the lost shards' too
            await eventually(lambda: handled == dict.fromkeys(range(SHARDS), 300), timeout=30)
            assert client.gaps == 0
            identifies = emu.gateway.identifies
            assert len(identifies) == SHARDS  # the lost shards were resumed, not identified
            assert len(emu.received(op=6)) >= len(lost)  # RESUMEs from the new owners
            for shard in range(SHARDS):  # one session each, the first one, live again
                (session,) = emu.sessions(shard)
                assert session.connection is not None and not session.invalid
                assert emu.gateway.longest_overlap(shard) <= ttl
        finally:
            if reader is not None:
                reader.cancel()
            client.close()
            for host in running:
                host.stop()


async def test_three_hosts_started_together_identify_48_shards_once_each(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The issue's start: 3 hosts, 48 shards, max_concurrency 16, started at once. (How
    close to the identify bound they get is bench/cluster.py's figure, not a test's.)"""
    async with emulator(shards=48, max_concurrency=16) as emu:
        names = ("a", "b", "c")
        running = [HostProcess(emu, redis_server, tmp_path, n) for n in names]
        try:
            await eventually(lambda: ready_union(running) == set(range(48)), timeout=120)
            identifies = emu.gateway.identifies
            assert len(identifies) == 48 and all(r.outcome == "ready" for r in identifies)
            assert sorted(r.shard_id for r in identifies) == list(range(48))
            held = [host.ready_shards() for host in running]
            assert sorted(len(h) for h in held) == [16, 16, 16]
            assert set().union(*held) == set(range(48))  # one host each
        finally:
            for host in running:
                host.stop()


async def test_without_redis_no_shard_identifies_and_the_fleet_converges_when_it_is_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with emulator(shards=4, max_concurrency=1) as emu:
        async with hosts(emu, redis_server, tmp_path, ["a", "b"]) as running:
            await eventually(lambda: ready_everywhere(running, 4), timeout=60)
            identified = len(emu.gateway.identifies)
            redis_server.stop()
            await eventually(lambda: "Redis" in running["a"].status().cluster_problem, 30)
            # a shard whose session Discord ends must identify again: not while Redis is away
            await emu.invalid_session(0, resumable=False)
            await asyncio.sleep(3.0)  # a window in which an IDENTIFY would have gone out
            assert len(emu.gateway.identifies) == identified
            assert sum(len(s.workers) for s in running.values()) == 4  # still running
            redis_server.start()
            await eventually(lambda: ready_everywhere(running, 4), timeout=60)
            assert len(emu.gateway.identifies) == identified + 1
            await eventually(lambda: running["a"].status().cluster_problem == "", 30)


async def test_a_paused_host_stops_what_it_lost_and_each_shard_ends_with_one_owner(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with emulator(shards=4, max_concurrency=2) as emu:
        running = [HostProcess(emu, redis_server, tmp_path, n) for n in ("a", "b")]
        try:
            a, b = running
            await eventually(lambda: shared(running, 4), timeout=90)
            paused = b.ready_shards()
            assert len(paused) == 2
            b.pause()  # SIGSTOP, the whole host, longer than its lease
            await eventually(lambda: a.ready_shards() == set(range(4)), timeout=60)
            b.resume()

            # b finds its leases gone: its old processes stop without resuming, and the share
            # moves two shards back to it by hand-over (a resumable close, then a RESUME)
            def settled() -> bool:
                mine, theirs = a.ready_shards(), b.ready_shards()
                return len(mine) == 2 and len(theirs) == 2 and not mine & theirs

            await eventually(settled, timeout=60)
            assert len(emu.gateway.identifies) == 4  # nothing identified again
            for shard in range(4):  # one live session per shard
                live = [x for x in emu.sessions(shard) if x.connection is not None]
                assert len(live) == 1, (shard, live)
                assert emu.gateway.longest_overlap(shard) <= 3.0  # one lease TTL
        finally:
            for host in running:
                host.resume()
                host.stop()
