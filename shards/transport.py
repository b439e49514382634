"""A websocket client as an asyncio protocol over websockets' sans-I/O ``ClientProtocol``.

Received messages are handed to a callback straight from ``data_received`` (no task or future
per message), which is the channel into the shard's loop. The loop is the only caller of
:meth:`send` and :meth:`close`. Also used by the voice worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

__all__ = ["ClosedInfo", "TransportError", "WebSocketTransport"]

MessageCallback = Callable[[bytes | str], None]


class TransportError(ConnectionError):
    """The websocket could not be opened; the message says why."""


class ClosedInfo:
    """How a connection ended: the close code received (None: no close frame), its reason,
    and whether the close handshake completed."""

    __slots__ = ("code", "handshake", "reason")

    def __init__(self, code: int | None, reason: str, handshake: bool) -> None:
        self.code = code
        self.reason = reason
        self.handshake = handshake

    def __repr__(self) -> str:
        return f"ClosedInfo(code={self.code}, reason={self.reason!r}, handshake={self.handshake})"


class WebSocketTransport(asyncio.Protocol):
    def __init__(
        self,
        url: str,
        on_message: MessageCallback,
        on_closed: Callable[[WebSocketTransport, ClosedInfo], None],
        *,
        max_size: int | None = None,
    ) -> None:
        self.url = url
        self._on_message = on_message
        self._on_closed = on_closed
        self.ws = ClientProtocol(parse_uri(url), max_size=max_size)
        self.transport: asyncio.Transport | None = None
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._closed = asyncio.get_running_loop().create_future()
        self._close_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        on_message: MessageCallback,
        on_closed: Callable[[WebSocketTransport, ClosedInfo], None],
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> WebSocketTransport:
        """Open the TCP (TLS for wss) connection and complete the websocket handshake."""
        loop = asyncio.get_running_loop()
        uri = parse_uri(url)
        self = cls(url, on_message, on_closed)
        context = ssl_context or (ssl.create_default_context() if uri.secure else None)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: self, uri.host, uri.port, ssl=context if uri.secure else None
                )
                await self._handshake
        except TimeoutError:
            self.abort()
            raise TransportError(f"timed out connecting to {url}") from None
        except OSError as exc:
            self.abort()
            raise TransportError(f"cannot connect to {url}: {exc}") from None
        return self

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
            elif isinstance(event, Response) and not self._handshake.done():
                if ws.handshake_exc is not None:
                    self._handshake.set_exception(
                        TransportError(
                            f"websocket handshake with {self.url} failed: {ws.handshake_exc}"
                        )
                    )
                else:
                    self._handshake.set_result(None)
        self._flush()
        if ws.close_expected():
            self._schedule_close()

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                data = frame.data
                self._on_message(bytes(data) if opcode is Opcode.BINARY else bytes(data).decode())
                return
            self._fragments = [bytes(frame.data)]
            self._fragment_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                whole = b"".join(self._fragments)
                self._fragments = []
                self._on_message(whole.decode() if self._fragment_text else whole)

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self._handshake.done():
            self._handshake.set_exception(
                TransportError(f"connection to {self.url} closed during the handshake: {exc}")
            )
        if not self._closed.done():
            self._closed.set_result(None)
            rcvd = self.ws.close_rcvd
            handshake = rcvd is not None and self.ws.close_sent is not None
            self._on_closed(
                self,
                ClosedInfo(rcvd.code if rcvd else None, rcvd.reason if rcvd else "", handshake),
            )

    # -- the loop's side ------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.ws.state is State.OPEN

    def send(self, data: bytes) -> None:
        """Send one text message. Raises ConnectionError when the socket is not open."""
        if self.ws.state is not State.OPEN:
            raise ConnectionError("websocket is not open")
        self.ws.send_text(data)
        self._flush()

    def close(self, code: int, reason: str = "") -> None:
        """Start the close handshake; ``on_closed`` fires when the TCP connection is gone."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self._flush()
            self._schedule_close()
        elif self.ws.state is State.CONNECTING:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                with contextlib.suppress(OSError):
                    transport.write_eof()

    def _schedule_close(self, timeout: float = 5.0) -> None:
        if self._close_timer is None and self.transport is not None:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(timeout, self.abort)
