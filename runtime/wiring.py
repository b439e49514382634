"""The supervisor's sockets: the event bus (its own thread), the supervisor's publisher on
it, the control ROUTER the workers talk to, the command ROUTER applications and the CLI talk
to, and, for tcp:// endpoints, CURVE with the client allow-list. Opening is all or nothing:
a failure closes what was opened and names the endpoint."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from ipc.codec import control_to, encode_bus_event
from ipc.messages import Event, Message
from ipc.status import SubscriberRecord
from runtime.bus import EventBus
from runtime.config import Config
from runtime.curveauth import PEER_DOMAIN, ClientAllowList

__all__ = ["Endpoints", "StartupError", "Wiring"]


class StartupError(RuntimeError):
    """The fleet cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class Endpoints:
    """The sockets of one supervisor, all in its private runtime directory by default."""

    bus_in: str  # workers publish here (XSUB)
    events: str  # applications subscribe here (ROUTER)
    control: str  # workers' DEALERs (ROUTER)
    commands: str  # applications and the CLI (ROUTER)
    peer_in: str = ""  # other hosts of a fleet push their events here (PULL); "": no fleet
    # a reshard's other generation of shards publishes and talks here (docs/resharding.md)
    bus_in_b: str = ""
    control_b: str = ""

    @classmethod
    def in_dir(
        cls, runtime_dir: Path, events: str = "", commands: str = "", peer_in: str | None = None
    ) -> Endpoints:
        """``peer_in``: None for a single host; "" for the default in ``runtime_dir``."""
        return cls(
            bus_in=f"ipc://{runtime_dir}/bus-in.sock",
            events=events or f"ipc://{runtime_dir}/events.sock",
            control=f"ipc://{runtime_dir}/control.sock",
            commands=commands or f"ipc://{runtime_dir}/commands.sock",
            peer_in="" if peer_in is None else (peer_in or f"ipc://{runtime_dir}/peers.sock"),
            bus_in_b=f"ipc://{runtime_dir}/bus-in-2.sock",
            control_b=f"ipc://{runtime_dir}/control-2.sock",
        )

    def all(self) -> tuple[str, ...]:
        ends = (
            *(self.bus_in, self.events, self.control, self.commands),
            *(self.peer_in, self.bus_in_b, self.control_b),
        )
        return tuple(e for e in ends if e)


class Wiring:
    def __init__(self, config: Config, endpoints: Endpoints, runtime_dir: Path) -> None:
        self.config = config
        self.endpoints = endpoints
        self.runtime_dir = runtime_dir
        self.ctx = zmq.asyncio.Context()
        self._thread_ctx = zmq.Context()  # the bus thread's sockets and the publisher
        self.bus: EventBus | None = None
        self.allow_list: ClientAllowList | None = None  # tcp:// endpoints: who may connect
        self.control: zmq.asyncio.Socket | None = None
        self.control_b: zmq.asyncio.Socket | None = None  # a reshard's other generation
        self.shard_control: zmq.asyncio.Socket | None = None  # the current generation's
        self.commands: zmq.asyncio.Socket | None = None
        self._publisher: zmq.Socket[Any] | None = None

    def open(self) -> None:
        """Bind everything (the allow-list first for tcp:// endpoints); raises StartupError
        naming the endpoint that failed, with everything closed again."""
        e = self.endpoints
        opened: list[zmq.Socket[Any]] = []
        endpoint = ""
        try:
            if any(x.startswith("tcp://") for x in (e.events, e.commands, e.peer_in)):
                allowed = self.config.ipc.client_public_keys
                peers: tuple[str, ...] = ()
                if self.config.cluster.enabled:  # the fleet's hosts share the [ipc] keypair
                    peers = (self.config.ipc.curve_public_key,)
                    allowed = (*allowed, *peers)  # (their forwarded commands)
                self.allow_list = ClientAllowList(allowed, self.runtime_dir, peers)
                self.allow_list.start(self.ctx, self._thread_ctx)
            endpoint = e.events
            self.bus = EventBus(
                self._thread_ctx,
                e.bus_in,
                e.events,
                buffer_bytes=self.config.bus.subscriber_buffer_bytes,
                secure=lambda sock: self._secure(sock, e.events),
                peer_in=e.peer_in,
                secure_peer_in=lambda sock: self._secure(sock, e.peer_in, PEER_DOMAIN),
                secure_link=self.secure_client,
                host=self.config.cluster.host_name() if self.config.cluster.enabled else "",
                bus_in_b=e.bus_in_b,
            )
            self.bus.start()
            publisher = self._thread_ctx.socket(zmq.PUB)  # the supervisor's own events
            opened.append(publisher)
            publisher.setsockopt(zmq.LINGER, 0)
            publisher.setsockopt(zmq.SNDHWM, 1000)
            publisher.connect(e.bus_in)
            control = self.ctx.socket(zmq.ROUTER)
            opened.append(control)
            endpoint = e.control
            control.bind(endpoint)
            control_b = None
            if e.control_b:
                control_b = self.ctx.socket(zmq.ROUTER)
                opened.append(control_b)
                endpoint = e.control_b
                control_b.bind(endpoint)
            commands = self.ctx.socket(zmq.ROUTER)
            opened.append(commands)
            self._secure(commands, e.commands)
            endpoint = e.commands
            commands.bind(endpoint)
        except zmq.ZMQError as exc:
            for sock in opened:
                sock.close(linger=0)
            self._close_contexts()
            endpoint = getattr(exc, "endpoint", endpoint)
            raise StartupError(
                f"cannot listen on {endpoint}: {exc} (is another program using it?)"
            ) from None
        self._publisher, self.control, self.commands = publisher, control, commands
        self.control_b, self.shard_control = control_b, control
        for path in e.all():  # only we may connect to a local socket
            if path.startswith("ipc://"):
                with contextlib.suppress(OSError):
                    os.chmod(path.removeprefix("ipc://"), 0o600)

    def _secure(self, sock: zmq.Socket[Any], endpoint: str, domain: str = "") -> None:
        """A tcp:// endpoint is a CURVE server: only clients that know its public key (from
        the config) and whose own key is allowed (in ZAP ``domain``) get through."""
        if not endpoint.startswith("tcp://"):
            return
        if domain:
            sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
        ipc = self.config.ipc
        if not (ipc.curve_public_key and ipc.curve_secret_key):
            raise StartupError(f"{endpoint} is tcp:// but ipc.curve_*_key are not set")
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, ipc.curve_secret_key.encode())

    def secure_client(self, sock: zmq.Socket[Any], server_key: str) -> None:
        """Make ``sock`` a CURVE client of another host of the fleet (server public key
        ``server_key``; none for an ipc:// endpoint), as this host's [ipc] keypair."""
        if not server_key:
            return
        ipc = self.config.ipc
        if not (ipc.curve_public_key and ipc.curve_secret_key):
            raise zmq.ZMQError(zmq.EINVAL, "ipc.curve_*_key are not set")
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, ipc.curve_public_key.encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, ipc.curve_secret_key.encode())

    def send(self, identity: str, message: Message) -> None:
        """A control message to one worker (``shard:N`` of the current generation,
        ``voice:GUILD``), never blocking."""
        sock = self.shard_control if identity.startswith("shard:") else self.control
        self.send_on(sock, identity, message)

    def send_on(self, sock: zmq.asyncio.Socket | None, identity: str, message: Message) -> None:
        """A control message to a worker behind ``sock`` (one generation's), never blocking."""
        if sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart(control_to(identity, message), flags=zmq.NOBLOCK)

    def publish(self, event: Event) -> None:
        """A supervisor event on the bus, never blocking."""
        if self._publisher is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._publisher.send_multipart(
                    encode_bus_event(event, "supervisor", time.time_ns()), flags=zmq.NOBLOCK
                )

    @property
    def bus_serving(self) -> bool:
        return self.bus is not None and self.bus.serving

    def subscribers(self) -> list[SubscriberRecord]:
        return self.bus.stats() if self.bus is not None else []

    def close(self) -> None:
        for sock in (self.control, self.control_b, self.commands):
            if sock is not None:
                sock.close(linger=0)
        if self._publisher is not None:
            self._publisher.close(linger=0)
        self.control = self.control_b = self.shard_control = None
        self.commands = self._publisher = None
        self._close_contexts()

    def _close_contexts(self) -> None:
        if self.allow_list is not None:  # its ZAP sockets live in both contexts
            self.allow_list.stop()
        self.ctx.term()
        self._thread_ctx.term()
        if self.bus is not None:
            self.bus.join(5)
