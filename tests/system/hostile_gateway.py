"""A gateway server that misbehaves on purpose, for the fault suite.

Each connection runs a *scenario*: an async function given the connection's number (1, 2,
...) and a :class:`Peer` to send frames, read what the client sent and close. The server
records when each connection opened and every payload the client sent, so a test can check
that a fault is met with growing backoff and without spending identifies.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["HostileGateway", "Peer", "Scenario", "frame"]


def frame(op: int, d: Any = None, s: int | None = None, t: str | None = None) -> bytes:
    return orjson.dumps({"t": t, "s": s, "op": op, "d": d})


class Peer:
    """One client connection, seen from the server."""

    def __init__(self, ws: ServerConnection, compress: bool) -> None:
        self.ws = ws
        self._deflate = zlib.compressobj() if compress else None

    async def send(self, payload: bytes) -> None:
        """A payload as Discord would frame it (zlib-stream when the client asked for it)."""
        if self._deflate is not None:
            await self.ws.send(
                self._deflate.compress(payload) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
            )
        else:
            await self.ws.send(payload.decode())

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.recv()
                payload = orjson.loads(message)
                if payload.get("op") != 1:  # heartbeats are answered by the server loop
                    return dict(payload)
                await self.send(frame(11))

    async def hello(self, interval_ms: Any = 41_250) -> None:
        await self.send(frame(10, {"heartbeat_interval": interval_ms}))

    async def close(self, code: int, reason: str = "") -> None:
        await self.ws.close(code, reason)

    async def hold(self) -> None:
        """Keep the connection open, acknowledging heartbeats, until the client leaves."""
        try:
            while True:
                message = await self.ws.recv()
                if orjson.loads(message).get("op") == 1:
                    await self.send(frame(11))
        except ConnectionClosed:
            return


Scenario = Callable[[int, Peer], Awaitable[None]]


class HostileGateway:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.opened: list[float] = []  # time.monotonic() of each connection
        self.received: list[dict[str, Any]] = []
        self._server: Server | None = None
        self._changed = asyncio.Condition()
        self.url = ""

    @property
    def identifies(self) -> int:
        return sum(1 for p in self.received if p.get("op") == 2)

    async def __aenter__(self) -> HostileGateway:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        self.opened.append(time.monotonic())
        number = len(self.opened)
        path = ws.request.path if ws.request else ""
        peer = _RecordingPeer(ws, "compress=zlib-stream" in path, self)
        await self._notify()
        try:
            await self.scenario(number, peer)
        except (ConnectionClosed, TimeoutError):
            pass

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_connections(self, count: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.opened) >= count)

    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.opened)]


class _RecordingPeer(Peer):
    def __init__(self, ws: ServerConnection, compress: bool, server: HostileGateway) -> None:
        super().__init__(ws, compress)
        self.server = server

    async def receive(self, timeout: float = 10.0) -> dict[str, Any]:
        payload = await super().receive(timeout)
        self.server.received.append(payload)
        return payload
