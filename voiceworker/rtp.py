"""RTP for Discord voice (RFC 3550): the 12-byte header we send, and parsing what we receive.

Opus at 48 kHz in 20 ms frames: the timestamp advances 960 per frame; seq and timestamp wrap
(16 and 32 bits). Payload type 0x78 (120), version 2, no padding, no CSRCs on what we send.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["HEADER_SIZE", "RtpError", "RtpHeader", "RtpPacketizer", "parse_rtp"]

HEADER_SIZE = 12
SAMPLES_PER_FRAME = 960  # 20 ms at 48 kHz
PAYLOAD_TYPE = 0x78
_HEADER = struct.Struct(">BBHII")


class RtpError(ValueError):
    """A packet too short or not RTP version 2."""


@dataclass(frozen=True, slots=True)
class RtpHeader:
    marker: bool
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    extension: bool
    csrc_count: int
    unencrypted_size: int  # header + CSRCs (+ the 4-byte extension preamble when X is set)


class RtpPacketizer:
    """Numbers our outgoing frames: seq +1 and timestamp +960 per frame, both wrapping."""

    def __init__(self, ssrc: int, seq: int = 0, timestamp: int = 0) -> None:
        self.ssrc = ssrc
        self.seq = seq & 0xFFFF
        self.timestamp = timestamp & 0xFFFFFFFF

    def next_header(self, samples: int = SAMPLES_PER_FRAME) -> bytes:
        header = _HEADER.pack(0x80, PAYLOAD_TYPE, self.seq, self.timestamp, self.ssrc)
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        return header

    def skip(self, frames: int) -> None:
        """Frames not sent (a pause): the timestamp still advances, the seq does not."""
        self.timestamp = (self.timestamp + frames * SAMPLES_PER_FRAME) & 0xFFFFFFFF


def parse_rtp(packet: bytes) -> RtpHeader:
    """The header of a received packet. Raises :class:`RtpError` for anything else."""
    if len(packet) < HEADER_SIZE:
        raise RtpError(f"{len(packet)} bytes is too short for RTP")
    first, second, seq, timestamp, ssrc = _HEADER.unpack_from(packet)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    csrc_count = first & 0x0F
    extension = bool(first & 0x10)
    size = HEADER_SIZE + 4 * csrc_count + (4 if extension else 0)
    if len(packet) < size:
        raise RtpError("packet shorter than its own header")
    return RtpHeader(
        marker=bool(second & 0x80),
        payload_type=second & 0x7F,
        seq=seq,
        timestamp=timestamp,
        ssrc=ssrc,
        extension=extension,
        csrc_count=csrc_count,
        unencrypted_size=size,
    )


def extension_body_size(packet: bytes, header: RtpHeader) -> int:
    """Bytes of header extension (after its 4-byte preamble), which the ``_rtpsize`` modes
    encrypt with the payload: strip them from the decrypted payload."""
    if not header.extension:
        return 0
    preamble = header.unencrypted_size - 4
    words = int.from_bytes(packet[preamble + 2 : preamble + 4], "big")
    return 4 * words
