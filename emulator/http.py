"""A small HTTP/1.1 server for the emulator's REST routes and its JSON control API.

Just enough HTTP for Discord clients (aiohttp in discord.py and hikari) and for scripts:
keep-alive, Content-Length bodies, JSON in and out. Not a general web server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

__all__ = ["HttpRequest", "HttpResponse", "HttpServer", "json_response"]

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
}


@dataclass
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else {}


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(
        status, orjson.dumps(obj), {"Content-Type": "application/json", **(headers or {})}
    )


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class HttpServer:
    """Serves ``handler`` on a TCP port; every request gets exactly one response."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve_client, host, port)
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while True:
                request = await self._read_request(reader, writer)
                if request is None:
                    break
                try:
                    response = await self._handler(request)
                except Exception as exc:  # a bug in a route must not kill the server
                    response = json_response(500, {"message": f"emulator error: {exc!r}"})
                keep_alive = request.headers.get("connection", "").lower() != "close"
                self._write(writer, response, keep_alive)
                await writer.drain()
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> HttpRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            self._write(writer, json_response(413, {"message": "headers too large"}), False)
            return None
        if len(head) > MAX_HEADER_BYTES:
            return None
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            self._write(writer, json_response(400, {"message": "bad request line"}), False)
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            self._write(writer, json_response(413, {"message": "body too large"}), False)
            return None
        body = await reader.readexactly(length) if length else b""
        parts = urlsplit(target)
        return HttpRequest(method.upper(), parts.path, parse_qs(parts.query), headers, body)

    @staticmethod
    def _write(writer: asyncio.StreamWriter, response: HttpResponse, keep_alive: bool) -> None:
        reason = REASONS.get(response.status, "Unknown")
        head = [f"HTTP/1.1 {response.status} {reason}"]
        headers = {
            "Content-Length": str(len(response.body)),
            "Connection": "keep-alive" if keep_alive else "close",
            **response.headers,
        }
        head.extend(f"{k}: {v}" for k, v in headers.items())
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
