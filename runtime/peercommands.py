"""Commands this host hands to another host of the fleet: a request for a shard (or a voice
session) another host runs goes to that host's command endpoint, marked as forwarded (so it
is never forwarded again), and its reply comes back unchanged to whoever asked."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from ipc.messages import ErrorCode, ErrorReply
from ipc.requests import RawRequest, relay_frames
from runtime.bus import PeerAddress, dial

__all__ = ["FORWARD_TIMEOUT", "PeerCommands"]

log = logging.getLogger("shardline.supervisor")

FORWARD_TIMEOUT = 8.0  # under a client's usual 10 s, so that it hears why
MAX_PENDING = 10_000


class _Link:
    def __init__(self, address: PeerAddress, sock: zmq.asyncio.Socket) -> None:
        self.address = address
        self.sock = sock
        self.reader: asyncio.Task[None] | None = None


class PeerCommands:
    def __init__(
        self,
        context: zmq.asyncio.Context,
        host: str,
        secure: Callable[[zmq.Socket[Any], str], None],
        timeout: float = FORWARD_TIMEOUT,
    ) -> None:
        self.context = context
        self.host = host
        self.secure = secure
        self.timeout = timeout
        self._links: dict[str, _Link] = {}
        self._ids = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        self.forwarded = 0

    def set_peers(self, peers: dict[str, PeerAddress]) -> None:
        """Keep a connection to exactly these hosts' command endpoints."""
        for name in [n for n in self._links if peers.get(n) != self._links[n].address]:
            self._close(name)
        for name, address in peers.items():
            if name in self._links:
                continue
            try:
                sock = dial(self.context, zmq.DEALER, address, self.secure)
            except zmq.ZMQError as exc:
                log.warning(f"cannot reach host {name}'s commands at {address.endpoint}: {exc}")
                continue
            link = _Link(address, sock)
            link.reader = asyncio.get_running_loop().create_task(self._read(link))
            self._links[name] = link

    async def forward(self, host: str, request: RawRequest, why: str) -> bytes:
        """``request`` answered by ``host``: its reply's bytes, or an error reply's saying
        why there is none (``why`` says why the request went there)."""
        link = self._links.get(host)
        if link is None:
            return _error(
                ErrorCode.UNAVAILABLE,
                f"{why}, but this host has no connection to it yet (the hosts meet at each "
                "turn, every lease_ttl / 3); try again in a moment",
            )
        if len(self._pending) >= MAX_PENDING:
            return _error(ErrorCode.UNAVAILABLE, "too many commands forwarded to other hosts")
        request_id = str(next(self._ids)).encode()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        frames = relay_frames(request_id, request, self.host)
        try:
            async with asyncio.timeout(self.timeout):
                await link.sock.send_multipart(frames)
                body = await future
        except TimeoutError:
            return _error(
                ErrorCode.TIMEOUT, f"{why}, and it did not answer within {self.timeout:.0f}s"
            )
        except zmq.ZMQError as exc:
            return _error(ErrorCode.UNAVAILABLE, f"{why}, and it cannot be reached: {exc}")
        finally:
            self._pending.pop(request_id, None)
        self.forwarded += 1
        return body

    async def _read(self, link: _Link) -> None:
        with contextlib.suppress(zmq.ZMQError):
            while True:
                frames = await link.sock.recv_multipart()
                if len(frames) != 2:
                    continue  # not a reply: another host's input, checked like any other
                future = self._pending.get(frames[0])
                if future is not None and not future.done():
                    future.set_result(frames[1])

    def _close(self, name: str) -> None:
        link = self._links.pop(name)
        if link.reader is not None:
            link.reader.cancel()
        link.sock.close(linger=0)

    def close(self) -> None:
        for name in list(self._links):
            self._close(name)


def _error(code: ErrorCode, message: str) -> bytes:
    return ErrorReply.of(code, message).encode()
