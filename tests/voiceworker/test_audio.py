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


def test_ffmpeg_source_decodes_a_wav_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import wave

    from voiceworker.audio import FFmpegSource, open_source

    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as w:  # mono 22.05 kHz: ffmpeg resamples to 48 kHz stereo
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22_050)
        w.writeframes(
            b"".join(struct.pack("<h", int(7000 * math.sin(i / 7))) for i in range(22_050 // 5))
        )
    source = open_source(str(path))
    assert isinstance(source, FFmpegSource)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    assert len(frames) == 10  # 0.2 s = ten 20 ms frames
    decoder = opuslib.Decoder(48_000, 2)
    loud = struct.unpack(f"<{FRAME_BYTES // 2}h", decoder.decode(frames[5], 960))
    assert max(abs(s) for s in loud) > 2000


def test_ffmpeg_source_reports_undecodable_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from voiceworker.audio import open_source

    path = tmp_path / "broken.mp3"
    path.write_bytes(b"not audio at all" * 10)
    source = open_source(str(path))
    with pytest.raises(ValueError, match="ffmpeg could not decode"):
        while source.read() is not None:
            pass
    source.close()


def test_ffmpeg_source_waits_for_the_exit_status_when_its_output_ends(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # ffmpeg closes its output a moment before it exits. A check made in that moment (here
    # held open: poll() still says "running") must still see the failure, not an empty file.
    import pytest

    from voiceworker.audio import open_source

    path = tmp_path / "broken.mp3"
    path.write_bytes(b"not audio at all" * 10)
    source = open_source(str(path))
    ffmpeg = source.process  # type: ignore[attr-defined]
    ffmpeg.wait()

    class Exiting:
        stderr = ffmpeg.stderr

        def poll(self) -> None:
            return None

        def wait(self, timeout: float | None = None) -> int:
            return int(ffmpeg.returncode)

        def kill(self) -> None:
            pass

    source.process = Exiting()  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="ffmpeg could not decode"):
        while source.read() is not None:
            pass
    source.close()
