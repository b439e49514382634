"""UDP IP discovery: learn the address and port the voice server sees us at.

Request and response are 74 bytes: type (u16), length (u16, 70), SSRC (u32), address
(64 bytes, NUL-terminated), port (u16), all big-endian. Request type 0x1, response 0x2.
"""

from __future__ import annotations

import struct

__all__ = ["DISCOVERY_SIZE", "DiscoveryError", "build_request", "build_response", "parse_response"]

DISCOVERY_SIZE = 74
_PACKET = struct.Struct(">HHI64sH")


class DiscoveryError(ValueError):
    """Not a discovery response; the message says what is wrong."""


def build_request(ssrc: int) -> bytes:
    return _PACKET.pack(0x1, 70, ssrc, b"", 0)


def build_response(ssrc: int, address: str, port: int) -> bytes:
    """What the voice server answers (the emulator uses the same layout, from the docs)."""
    return _PACKET.pack(0x2, 70, ssrc, address.encode(), port)


def parse_response(data: bytes, ssrc: int | None = None) -> tuple[str, int]:
    """(address, port) from a response; raises :class:`DiscoveryError`."""
    if len(data) != DISCOVERY_SIZE:
        raise DiscoveryError(f"{len(data)} bytes, expected {DISCOVERY_SIZE}")
    kind, length, their_ssrc, address, port = _PACKET.unpack(data)
    if kind != 0x2 or length != 70:
        raise DiscoveryError(f"type {kind:#x} length {length}, expected a 0x2 response of 70")
    if ssrc is not None and their_ssrc != ssrc:
        raise DiscoveryError(f"response for SSRC {their_ssrc}, ours is {ssrc}")
    text = address.split(b"\0", 1)[0].decode("ascii", "replace")
    if not text:
        raise DiscoveryError("response carries no address")
    return text, port
