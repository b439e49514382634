"""Ogg Opus passthrough: the Opus packets of an ``.opus``/``.ogg`` file, sent as they are.

Pre-encoded audio needs no decoding or re-encoding (the most expensive part of sending:
~0.4 ms of CPU a frame here). Each packet must hold 20 ms of audio, the voice clock's frame;
files with other packet durations go through ffmpeg instead (``open_source`` decides).

Source: RFC 3533 (Ogg pages, lacing), RFC 7845 (OpusHead, OpusTags), RFC 6716 3.1 (the TOC
byte: frame size and count).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["NotOggOpusError", "OggOpusSource", "ogg_packets", "packet_duration_ms"]

_PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, type, granule, serial, seq, crc, n
_CONTINUED = 0x01


class NotOggOpusError(ValueError):
    """The file is not Ogg Opus with 20 ms packets; the message says what it is instead."""


def ogg_packets(stream: BinaryIO) -> Iterator[bytes]:
    """The packets of the first logical stream, reassembled across segments and pages."""
    partial = b""
    serial: int | None = None
    while True:
        header = stream.read(_PAGE_HEADER.size)
        if not header:
            return
        if len(header) < _PAGE_HEADER.size or header[:4] != b"OggS":
            raise NotOggOpusError("not an Ogg stream (no OggS page where one was due)")
        _, _, kind, _, page_serial, _, _, count = _PAGE_HEADER.unpack(header)
        lacing = stream.read(count)
        body = stream.read(sum(lacing))
        if len(lacing) < count or len(body) < sum(lacing):
            raise NotOggOpusError("the Ogg stream ends in the middle of a page")
        if serial is None:
            serial = page_serial
        elif page_serial != serial:
            continue  # another logical stream (a chained or multiplexed file): skipped
        if not kind & _CONTINUED:
            partial = b""  # a packet left open by the previous page was lost
        at = 0
        for size in lacing:
            partial += body[at : at + size]
            at += size
            if size < 255:  # a lacing value under 255 ends the packet
                yield partial
                partial = b""


_FRAME_MS = (10, 20, 40, 60) * 3 + (10, 20) * 2 + (2.5, 5, 10, 20) * 4  # by TOC config


def packet_duration_ms(packet: bytes) -> float:
    """How much audio an Opus packet holds, from its TOC byte (RFC 6716 3.1)."""
    if not packet:
        return 0.0
    toc = packet[0]
    frame = _FRAME_MS[toc >> 3]
    code = toc & 0x03
    if code == 0:
        return frame
    if code in (1, 2):
        return 2 * frame
    if len(packet) < 2:
        raise NotOggOpusError("an Opus packet with code 3 and no frame count")
    return (packet[1] & 0x3F) * frame


class OggOpusSource:
    """An Ogg Opus file's packets, one per 20 ms frame, never re-encoded. ``volume`` cannot
    apply without decoding: it is kept and ignored (documented in docs/voice.md)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.volume = 1.0
        self._packets = ogg_packets(stream)
        head = next(self._packets, b"")
        if not head.startswith(b"OpusHead"):
            raise NotOggOpusError("an Ogg file whose first packet is not OpusHead (not Opus)")
        tags = next(self._packets, b"")
        if not tags.startswith(b"OpusTags"):
            raise NotOggOpusError("an Ogg Opus file without OpusTags after OpusHead")
        self._first = self._next_audio()
        if self._first is not None and packet_duration_ms(self._first) != 20:
            ms = packet_duration_ms(self._first)
            raise NotOggOpusError(f"Ogg Opus with {ms:g} ms packets (passthrough needs 20 ms)")

    def _next_audio(self) -> bytes | None:
        for packet in self._packets:
            if packet:
                return packet
        return None

    def read(self) -> bytes | None:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        packet = self._next_audio()
        if packet is not None and packet_duration_ms(packet) != 20:
            ms = packet_duration_ms(packet)
            raise NotOggOpusError(f"an Ogg Opus packet of {ms:g} ms in a 20 ms stream")
        return packet

    def close(self) -> None:
        self.stream.close()
