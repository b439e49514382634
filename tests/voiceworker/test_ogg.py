"""Ogg Opus passthrough: packets come out of pages exactly as they went in (lacing across
pages included), durations are read from the TOC byte, and what is not Ogg Opus with 20 ms
packets is refused with a reason (so ``open_source`` hands it to ffmpeg)."""

from __future__ import annotations

import io
import struct

import pytest

from tests.voiceworker.media import sine_opus
from voiceworker.audio import FFmpegSource, open_source
from voiceworker.ogg import NotOggOpusError, OggOpusSource, ogg_packets, packet_duration_ms

FB_20MS = 0xFC  # TOC: CELT fullband 20 ms, stereo, one frame
HEAD = b"OpusHead" + bytes((1, 2)) + struct.pack("<HIhB", 312, 48_000, 0, 0)
TAGS = b"OpusTags" + struct.pack("<I", 4) + b"test" + struct.pack("<I", 0)


def page(segments: list[bytes], *, continued: bool = False, seq: int = 0) -> bytes:
    """One Ogg page whose lacing carries ``segments`` (already laced: 255-byte pieces)."""
    lacing = bytes(len(s) for s in segments)
    header = struct.pack(
        "<4sBBqIIIB", b"OggS", 0, 1 if continued else 0, 0, 7, seq, 0, len(segments)
    )
    return header + lacing + b"".join(segments)


def lace(packet: bytes) -> list[bytes]:
    pieces = [packet[i : i + 255] for i in range(0, len(packet), 255)]
    if len(packet) % 255 == 0:
        pieces.append(b"")  # a packet of a multiple of 255 ends with a 0 lacing value
    return pieces


def test_packets_are_reassembled_across_segments_and_pages() -> None:
    big = bytes((FB_20MS,)) + bytes(range(256)) * 2  # 513 bytes: three segments
    exact = bytes((FB_20MS,)) + bytes(509)  # 510 = 2 x 255: ends with a 0 lacing value
    laced = lace(big)
    stream = (
        page(lace(HEAD))
        + page(lace(TAGS), seq=1)
        + page(laced[:2], seq=2)  # the big packet spills over into the next page
        + page(laced[2:] + lace(exact), continued=True, seq=3)
    )
    assert list(ogg_packets(io.BytesIO(stream))) == [HEAD, TAGS, big, exact]
    source = OggOpusSource(io.BytesIO(stream))
    assert [source.read(), source.read(), source.read()] == [big, exact, None]


def test_toc_durations() -> None:
    assert packet_duration_ms(bytes((FB_20MS,))) == 20
    assert packet_duration_ms(bytes((0xF8 | 1,))) == 40  # code 1: two frames
    assert packet_duration_ms(bytes((0x1B, 0x03))) == 180  # SILK 60 ms, code 3, 3 frames
    assert packet_duration_ms(bytes((0xE0,))) == 2.5  # CELT narrowband 2.5 ms


def test_what_is_not_20ms_ogg_opus_is_refused_with_a_reason() -> None:
    with pytest.raises(NotOggOpusError, match="not an Ogg"):
        OggOpusSource(io.BytesIO(b"RIFF" + bytes(40)))
    vorbis = page(lace(b"\x01vorbis" + bytes(23)))
    with pytest.raises(NotOggOpusError, match="not OpusHead"):
        OggOpusSource(io.BytesIO(vorbis))
    sixty = page(lace(HEAD)) + page(lace(TAGS), seq=1) + page([bytes((0x18,)) + bytes(30)], seq=2)
    with pytest.raises(NotOggOpusError, match="60 ms"):
        OggOpusSource(io.BytesIO(sixty))


def test_open_source_passes_ffmpeg_made_opus_through_and_decodes_others(tmp_path) -> None:  # type: ignore[no-untyped-def]
    opus = str(sine_opus(tmp_path / "tone.opus", seconds=1, frequency=440))
    source = open_source(opus)
    assert isinstance(source, OggOpusSource)
    packets = list(iter(source.read, None))
    assert 49 <= len(packets) <= 52 and all(packet_duration_ms(p) == 20 for p in packets)
    source.close()
    sixty = str(sine_opus(tmp_path / "long.opus", seconds=1, frequency=440, frame_ms=60))
    decoded = open_source(sixty)  # 60 ms packets: ffmpeg decodes, we re-encode 20 ms frames
    assert isinstance(decoded, FFmpegSource)
    assert 49 <= len(list(iter(decoded.read, None))) <= 52  # 1 s in 20 ms frames
    decoded.close()
    assert isinstance(open_source(opus, volume=0.5), FFmpegSource)  # volume needs decoding
