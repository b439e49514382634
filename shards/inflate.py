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

__all__ = ["DEFAULT_MAX_PAYLOAD", "ZLIB_SUFFIX", "InflateError", "Inflator", "make_inflator"]

ZLIB_SUFFIX = b"\x00\x00\xff\xff"
# The largest payload one message may inflate to. Discord's biggest dispatches are the
# GUILD_CREATEs of the largest guilds (channels, roles, emojis, threads, up to
# large_threshold members with presences): a few MB. 32 MiB leaves room for ten times that
# while a decompression bomb (50 KB -> 50 MB) is refused before it is held in memory.
DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024


class InflateError(ValueError):
    """The compressed stream is broken; the connection cannot continue (reconnect + resume)."""


class Inflator(Protocol):
    def feed(self, data: bytes | str) -> bytes | None:
        """Add one websocket message; return a complete payload, or None if more is needed."""
        ...


def _too_large(limit: int) -> InflateError:
    return InflateError(
        f"a payload inflates past the {limit}-byte limit (shards.max_payload_bytes)"
    )


class PlainStream:
    def __init__(self, max_size: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_size = max_size

    def feed(self, data: bytes | str) -> bytes | None:
        raw = data.encode() if isinstance(data, str) else data
        if len(raw) > self.max_size:
            raise _too_large(self.max_size)
        return raw


class ZlibStream:
    def __init__(self, max_size: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_size = max_size
        self._inflate = zlib.decompressobj()
        self._pending: list[bytes] = []
        self._pending_size = 0

    def feed(self, data: bytes | str) -> bytes | None:
        if isinstance(data, str):
            raise InflateError("text frame inside a zlib-stream connection")
        if not data.endswith(ZLIB_SUFFIX):
            self._pending_size += len(data)
            if self._pending_size > self.max_size:
                raise _too_large(self.max_size)  # compressed bytes alone are past it
            self._pending.append(data)
            return None
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
        try:
            out = self._inflate.decompress(data, self.max_size + 1)
        except zlib.error as exc:
            raise InflateError(f"zlib-stream is corrupt: {exc}") from None
        if len(out) > self.max_size or self._inflate.unconsumed_tail:
            raise _too_large(self.max_size)
        return out


class ZstdStream:
    def __init__(self, max_size: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_size = max_size
        self._inflate = ZstdDecompressor()

    def feed(self, data: bytes | str) -> bytes | None:
        if isinstance(data, str):
            raise InflateError("text frame inside a zstd-stream connection")
        try:
            out = self._inflate.decompress(data, self.max_size + 1)
        except ZstdError as exc:
            raise InflateError(f"zstd-stream is corrupt: {exc}") from None
        if len(out) > self.max_size:
            raise _too_large(self.max_size)
        return bytes(out)


def make_inflator(compression: str, max_size: int = DEFAULT_MAX_PAYLOAD) -> Inflator:
    """A fresh decompressor for ``zlib-stream``, ``zstd-stream`` or ``none``, refusing any
    payload that inflates past ``max_size`` bytes."""
    if compression == "zlib-stream":
        return ZlibStream(max_size)
    if compression == "zstd-stream":
        return ZstdStream(max_size)
    if compression in ("none", ""):
        return PlainStream(max_size)
    raise ValueError(f"unknown gateway compression {compression!r}")
