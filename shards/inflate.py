"""Transport decompression for the gateway stream: one context per connection.

zlib-stream: messages may be split over several websocket frames; a payload is complete when
the bytes received end with ``00 00 FF FF``. zstd-stream: each websocket message decodes to
exactly one payload.
"""

from __future__ import annotations

import zlib
from typing import Protocol

try:
    from compression.zstd import ZstdDecompressor, ZstdError  # type: ignore[import-not-found]
except ImportError:  # Python < 3.14
    from backports.zstd import ZstdDecompressor, ZstdError

__all__ = ["ZLIB_SUFFIX", "InflateError", "Inflator", "make_inflator"]

ZLIB_SUFFIX = b"\x00\x00\xff\xff"


class InflateError(ValueError):
    """The compressed stream is broken; the connection cannot continue (reconnect + resume)."""


class Inflator(Protocol):
    def feed(self, data: bytes | str) -> bytes | None:
        """Add one websocket message; return a complete payload, or None if more is needed."""
        ...


class PlainStream:
    def feed(self, data: bytes | str) -> bytes | None:
        return data.encode() if isinstance(data, str) else data


class ZlibStream:
    def __init__(self) -> None:
        self._inflate = zlib.decompressobj()
        self._pending: list[bytes] = []

    def feed(self, data: bytes | str) -> bytes | None:
        if isinstance(data, str):
            raise InflateError("text frame inside a zlib-stream connection")
        if not data.endswith(ZLIB_SUFFIX):
            self._pending.append(data)
            return None
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending.clear()
        try:
            return self._inflate.decompress(data)
        except zlib.error as exc:
            raise InflateError(f"zlib-stream is corrupt: {exc}") from None


class ZstdStream:
    def __init__(self) -> None:
        self._inflate = ZstdDecompressor()

    def feed(self, data: bytes | str) -> bytes | None:
        if isinstance(data, str):
            raise InflateError("text frame inside a zstd-stream connection")
        try:
            return bytes(self._inflate.decompress(data))
        except ZstdError as exc:
            raise InflateError(f"zstd-stream is corrupt: {exc}") from None


def make_inflator(compression: str) -> Inflator:
    """A fresh decompressor for ``zlib-stream``, ``zstd-stream`` or ``none``."""
    if compression == "zlib-stream":
        return ZlibStream()
    if compression == "zstd-stream":
        return ZstdStream()
    if compression in ("none", ""):
        return PlainStream()
    raise ValueError(f"unknown gateway compression {compression!r}")
