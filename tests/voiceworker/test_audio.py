"""Opus encoding and the PCM source, checked by decoding what they produce."""

from __future__ import annotations

import io
import math
import struct

import opuslib

from voiceworker.audio import FRAME_BYTES, PCMSource, scale_volume


def sine(seconds: float, freq: float = 440.0) -> bytes:
    n = int(48_000 * seconds)
    return b"".join(
        struct.pack("<hh", v, v)
        for v in (int(8000 * math.sin(2 * math.pi * freq * i / 48_000)) for i in range(n))
    )


def test_pcm_source_yields_decodable_20ms_frames() -> None:
    pcm = sine(0.1) + b"\x00" * 100  # five frames and a short tail
    frames = list(PCMSource(io.BytesIO(pcm)))
    assert len(frames) == 6
    decoder = opuslib.Decoder(48_000, 2)
    decoded = [decoder.decode(frame, 960) for frame in frames]
    assert all(len(d) == FRAME_BYTES for d in decoded)
    # the tone survives: energy in the middle frames
    samples = struct.unpack(f"<{FRAME_BYTES // 2}h", decoded[3])
    assert max(abs(s) for s in samples) > 2000


def test_volume_scales_and_clips() -> None:
    pcm = struct.pack("<4h", 1000, -1000, 30000, -30000)
    assert struct.unpack("<4h", scale_volume(pcm, 0.5)) == (500, -500, 15000, -15000)
    assert struct.unpack("<4h", scale_volume(pcm, 2.0)) == (2000, -2000, 32767, -32768)
