"""The supervisor's HTTP listener (``[metrics] listen``): ``/metrics`` for Prometheus,
``/healthz`` (the supervisor's loop answers) and ``/readyz`` (every shard this host owns is
READY and the bus is serving).

A deliberately small HTTP/1.1 server on the supervisor's own loop: GET (and HEAD) only, one
request per connection, the request head bounded in size and time, since anything on the
network may connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

__all__ = ["MetricsServer", "Readiness"]

log = logging.getLogger("shardline.supervisor")

MAX_HEAD = 8192  # bytes of request line and headers
HEAD_TIMEOUT = 5.0  # seconds to send them
MAX_CONNECTIONS = 64  # open at once; more are closed at once

Readiness = Callable[[], tuple[bool, str]]  # (ready, why not / what is ready)


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, readiness: Readiness) -> None:
        self.registry = registry
        self.readiness = readiness
        self._server: asyncio.Server | None = None
        self._open = 0
        self.address: tuple[str, int] | None = None  # where it listens, once started

    async def start(self, host: str, port: int) -> None:
        """Listen (raises OSError naming the address when it cannot)."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        try:
            status, content_type, body, head_only = await self._answer(reader)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if not head_only:
                writer.write(body)
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT * 2)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow: nothing to answer
        finally:
            self._open -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.LimitOverrunError, ValueError):
            return (
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
                False,
            )
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain", b"not an HTTP request\n", False
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n", False
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = generate_latest(self.registry)
            except Exception as exc:  # a bug in a collector must not take the listener down
                log.exception("metrics: collecting failed")
                return "500 Internal Server Error", "text/plain", f"{exc}\n".encode(), head_only
            return "200 OK", CONTENT_TYPE_LATEST, body, head_only
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n", head_only
        if path == "/readyz":
            ready, detail = self.readiness()
            status = "200 OK" if ready else "503 Service Unavailable"
            return status, "text/plain", f"{detail}\n".encode(), head_only
        return "404 Not Found", "text/plain", b"/metrics, /healthz or /readyz\n", head_only
