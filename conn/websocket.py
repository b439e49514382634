"""A websocket client (RFC 6455) as a plain asyncio protocol.

The opening handshake and the framing are written here rather than taken from a library:
a busy shard spends most of its time moving frames, and a per-frame parser in a general
library was its largest cost (see ``bench/shard_throughput.py``); importing one also costs
a few MB in every shard process. Received messages go to a callback straight from
``data_received`` (no task or future per message): that callback is the channel into the
shard's loop. The loop is the only caller of :meth:`send` and :meth:`close`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

from conn import tls

__all__ = ["ClosedInfo", "TransportError", "WebSocketTransport", "mask_payload"]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE = 16 * 1024
DEFAULT_MAX_MESSAGE = 32 * 1024 * 1024

MessageCallback = Callable[[bytes | str], None]


class TransportError(ConnectionError):
    """The websocket could not be opened; the message says why."""


class ClosedInfo:
    """How a connection ended: the close code received (None: no close frame), its reason,
    and whether the close handshake completed (both sides sent a close frame)."""

    __slots__ = ("code", "handshake", "reason")

    def __init__(self, code: int | None, reason: str, handshake: bool) -> None:
        self.code = code
        self.reason = reason
        self.handshake = handshake

    def __repr__(self) -> str:
        return f"ClosedInfo(code={self.code}, reason={self.reason!r}, handshake={self.handshake})"


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _close_body(code: int, reason: str) -> bytes:
    return code.to_bytes(2, "big") + reason.encode()[:123]


class WebSocketTransport(asyncio.Protocol):
    def __init__(
        self,
        url: str,
        on_message: MessageCallback,
        on_closed: Callable[[WebSocketTransport, ClosedInfo], None],
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.url = url
        self.max_message = max_message
        self._on_message = on_message
        self._on_closed = on_closed
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._handshake: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._close_timer: asyncio.TimerHandle | None = None
        self._key = base64.b64encode(os.urandom(16))
        self._request = b""
        self._framing = False  # True once the handshake is done
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_size = 0
        self._fragment_text = False
        self._close_sent: tuple[int, str] | None = None
        self._close_rcvd: tuple[int, str] | None = None
        self._failure = ""  # why we broke the connection, when the peer broke the protocol

    @classmethod
    async def connect(
        cls,
        url: str,
        on_message: MessageCallback,
        on_closed: Callable[[WebSocketTransport, ClosedInfo], None],
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> WebSocketTransport:
        """Open the TCP (TLS for wss) connection and complete the websocket handshake.
        A message longer than ``max_message`` bytes closes the connection with 1009."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise TransportError(f"not a websocket URL: {url!r}")
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self = cls(url, on_message, on_closed, max_message)
        self._request = (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nUser-Agent: shardline\r\n\r\n"
        ).encode()
        context = (ssl_context or tls.client_context()) if secure else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: self,
                    parts.hostname,
                    port,
                    ssl=context,
                    server_hostname=parts.hostname if secure else None,
                )
                await self._handshake
        except TimeoutError:
            self.abort()
            raise TransportError(f"timed out connecting to {url}") from None
        except OSError as exc:
            self.abort()
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"cannot connect to {url}: {exc}") from None
        return self

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._framing:
            self._parse_frames()
        else:
            self._parse_handshake()

    def _parse_handshake(self) -> None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HANDSHAKE:
                self._handshake_failed("the handshake response is too large")
            return
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        status = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(status) < 2 or status[1] != "101":
            self._handshake_failed(f"server answered {head[0]!r} instead of 101")
            return
        expected = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            self._handshake_failed("bad Sec-WebSocket-Accept")
            return
        if headers.get("upgrade", "").lower() != "websocket":
            self._handshake_failed("the response does not upgrade to websocket")
            return
        self._framing = True
        self._handshake.set_result(None)
        if self._buf:
            self._parse_frames()

    def _handshake_failed(self, why: str) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(
                TransportError(f"websocket handshake with {self.url}: {why}")
            )
        self.abort()

    def _parse_frames(self) -> None:
        buf = self._buf
        end = len(buf)
        off = 0
        while end - off >= 2:
            b0 = buf[off]
            length = buf[off + 1]
            if length & 0x80:
                self._fail(1002, "server frames must not be masked")
                return
            pos = off + 2
            if length == 126:
                if end - pos < 2:
                    break
                length = int.from_bytes(buf[pos : pos + 2], "big")
                pos += 2
            elif length == 127:
                if end - pos < 8:
                    break
                length = int.from_bytes(buf[pos : pos + 8], "big")
                pos += 8
            opcode = b0 & 0x0F
            if length > self.max_message or (
                opcode == OP_CONT and self._fragment_size + length > self.max_message
            ):
                self._fail(1009, f"message over {self.max_message} bytes")
                return
            if end - pos < length:
                break
            payload = bytes(buf[pos : pos + length])
            off = pos + length
            if opcode == OP_TEXT or opcode == OP_BINARY:
                if self._fragments:
                    self._fail(1002, "a new message began inside a fragmented one")
                    return
                if b0 & 0x80:
                    if not self._deliver(payload, opcode == OP_TEXT):
                        return
                else:
                    self._fragments = [payload]
                    self._fragment_size = length
                    self._fragment_text = opcode == OP_TEXT
            elif opcode == OP_CONT:
                if not self._fragments:
                    self._fail(1002, "a continuation frame without a message to continue")
                    return
                self._fragments.append(payload)
                self._fragment_size += length
                if b0 & 0x80:
                    whole = b"".join(self._fragments)
                    self._fragments = []
                    self._fragment_size = 0
                    if not self._deliver(whole, self._fragment_text):
                        return
            elif opcode == OP_PING:
                self._write_frame(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self._on_close_frame(payload)
            elif opcode != OP_PONG:
                self._fail(1002, f"unknown opcode {opcode}")
                return
        if off:
            del buf[:off]

    def _deliver(self, payload: bytes, text: bool) -> bool:
        """Hand one message to the loop; False when it broke the connection (bad UTF-8)."""
        if not text:
            self._on_message(payload)
            return True
        try:
            message = payload.decode()
        except UnicodeDecodeError:
            self._fail(1007, "a text message that is not UTF-8")
            return False
        self._on_message(message)
        return True

    def _on_close_frame(self, payload: bytes) -> None:
        if len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            reason = payload[2:].decode("utf-8", "replace")
        else:
            code, reason = 1005, ""
        self._close_rcvd = (code, reason)
        if self._close_sent is None:  # echo it, as the RFC asks
            self._close_sent = (code, "") if code != 1005 else (1000, "")
            self._write_frame(OP_CLOSE, b"" if code == 1005 else code.to_bytes(2, "big"))
        self._schedule_close(1.0)

    def _fail(self, code: int, reason: str) -> None:
        self._failure = f"we closed {code}: {reason}"
        if self._close_sent is None:
            self._close_sent = (code, reason)
            self._write_frame(OP_CLOSE, _close_body(code, reason))
        self.abort()

    def _write_frame(self, opcode: int, payload: bytes) -> None:
        """One masked client frame (RFC 6455 section 5.3)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        transport.write(head + mask + mask_payload(payload, mask))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self._handshake.done():
            self._handshake.set_exception(
                TransportError(f"connection to {self.url} closed during the handshake: {exc}")
            )
        if not self._closed.done():
            self._closed.set_result(None)
            rcvd = self._close_rcvd
            handshake = rcvd is not None and self._close_sent is not None
            reason = rcvd[1] if rcvd else self._failure
            self._on_closed(self, ClosedInfo(rcvd[0] if rcvd else None, reason, handshake))

    # -- the loop's side ------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return (
            self._framing
            and self._close_sent is None
            and self._close_rcvd is None
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def pause_reading(self) -> None:
        """Read nothing more until :meth:`resume_reading` (the peer's data waits in TCP)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(RuntimeError):  # not paused: nothing to do
                self.transport.resume_reading()

    def send(self, data: bytes, *, binary: bool = False) -> None:
        """Send one text (or binary) message. Raises ConnectionError when the socket is
        not open."""
        if not self.open:
            raise ConnectionError("websocket is not open")
        self._write_frame(OP_BINARY if binary else OP_TEXT, data)

    def close(self, code: int, reason: str = "") -> None:
        """Start the close handshake; ``on_closed`` fires when the TCP connection is gone."""
        if self.open:
            self._close_sent = (code, reason)
            self._write_frame(OP_CLOSE, _close_body(code, reason))
            self._schedule_close()
        elif not self._framing:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def _schedule_close(self, timeout: float = 5.0) -> None:
        if self._close_timer is None and self.transport is not None:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(timeout, self.abort)
