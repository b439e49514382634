"""A deliberately plain gateway client for testing the emulator: websockets + zlib/zstd +
orjson, no shardline code, so the emulator is checked against the protocol, not against us."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from backports.zstd import ZstdDecompressor
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from emulator import DEFAULT_TOKEN

TOKEN = DEFAULT_TOKEN


class PlainClient:
    def __init__(self, ws: ClientConnection, compress: str) -> None:
        self.ws = ws
        self.compress = compress
        self.raw_messages: list[bytes] = []
        self._zlib = zlib.decompressobj()
        self._zstd = ZstdDecompressor()
        self._buffer = b""

    @classmethod
    async def open(
        cls, url: str, *, compress: str = "", query: str = "v=10&encoding=json"
    ) -> PlainClient:
        full = f"{url}/?{query}" + (f"&compress={compress}" if compress else "")
        ws = await connect(full, max_size=None, compression=None, ping_interval=None)
        return cls(ws, compress)

    async def recv(self) -> dict[str, Any]:
        while True:
            message = await self.ws.recv()
            if isinstance(message, str):
                return orjson.loads(message)  # type: ignore[no-any-return]
            self.raw_messages.append(message)
            if self.compress == "zstd-stream":
                return orjson.loads(self._zstd.decompress(message))  # type: ignore[no-any-return]
            self._buffer += message
            if not self._buffer.endswith(b"\x00\x00\xff\xff"):
                continue
            data, self._buffer = self._zlib.decompress(self._buffer), b""
            return orjson.loads(data)  # type: ignore[no-any-return]

    async def recv_until(self, t: str) -> list[dict[str, Any]]:
        """Payloads up to and including the first dispatch of type ``t``."""
        out = []
        while True:
            payload = await self.recv()
            out.append(payload)
            if payload.get("t") == t:
                return out

    async def send(self, op: int, d: Any) -> None:
        await self.ws.send(orjson.dumps({"op": op, "d": d}).decode())

    async def identify(
        self, shard: tuple[int, int] = (0, 1), intents: int = 513, token: str = TOKEN, **extra: Any
    ) -> None:
        d = {
            "token": token,
            "intents": intents,
            "properties": {"os": "linux", "browser": "t", "device": "t"},
            "shard": list(shard),
            **extra,
        }
        await self.send(2, d)

    async def hello_and_ready(
        self, shard: tuple[int, int] = (0, 1), intents: int = 513, **extra: Any
    ) -> dict[str, Any]:
        hello = await self.recv()
        assert hello["op"] == 10
        await self.identify(shard, intents, **extra)
        ready = await self.recv()
        assert ready["t"] == "READY", ready
        return ready

    async def close_code(self) -> int | None:
        """Read until the server closes; the close code it sent."""
        try:
            while True:
                await self.ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

    async def close(self, code: int = 4000) -> None:
        await self.ws.close(code)
