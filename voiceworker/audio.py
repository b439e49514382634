"""Audio for the voice worker: Opus encoding and the sources that feed it.

Discord wants Opus at 48 kHz, stereo, 20 ms frames (960 samples per channel, 3,840 bytes of
s16le PCM). Sources yield one encoded frame per call; a source that ends yields None.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol

__all__ = [
    "FRAME_BYTES",
    "SILENCE",
    "AudioSource",
    "FFmpegSource",
    "OpusEncoder",
    "OpusUnavailableError",
    "PCMSource",
    "open_source",
    "scale_volume",
]

SAMPLE_RATE = 48_000
CHANNELS = 2
FRAME_SAMPLES = 960
FRAME_BYTES = FRAME_SAMPLES * CHANNELS * 2
SILENCE = b"\xf8\xff\xfe"  # an Opus silence frame; five follow the end of a track


class OpusUnavailableError(RuntimeError):
    """libopus is not installed (opuslib finds it with ctypes at import)."""


def opus_library() -> Any:
    try:
        import opuslib
    except Exception as exc:  # opuslib raises a bare Exception when libopus is missing
        raise OpusUnavailableError(
            f"cannot load libopus ({exc}): install the Opus library (Debian: libopus0; "
            "`make test` / scripts/bootstrap installs it)"
        ) from None
    return opuslib


class OpusEncoder:
    """48 kHz stereo, 20 ms frames, tuned for music (Discord's bitrate default: 64 kbit/s)."""

    def __init__(self, bitrate: int = 64_000) -> None:
        opuslib = opus_library()
        self._encoder = opuslib.Encoder(SAMPLE_RATE, CHANNELS, opuslib.APPLICATION_AUDIO)
        self._encoder.bitrate = bitrate

    def encode(self, pcm: bytes) -> bytes:
        """One frame of s16le stereo PCM (padded with silence if short) to one Opus packet."""
        if len(pcm) < FRAME_BYTES:
            pcm = pcm + bytes(FRAME_BYTES - len(pcm))
        return bytes(self._encoder.encode(pcm[:FRAME_BYTES], FRAME_SAMPLES))


class AudioSource(Protocol):
    def read(self) -> bytes | None:
        """The next Opus frame, or None when the source has ended."""
        ...

    def close(self) -> None: ...


def scale_volume(pcm: bytes, volume: float) -> bytes:
    """Scale s16le samples by ``volume`` (clipped)."""
    if volume == 1.0:
        return pcm
    count = len(pcm) // 2
    samples = struct.unpack(f"<{count}h", pcm[: count * 2])
    scaled = (max(-32768, min(32767, int(s * volume))) for s in samples)
    return struct.pack(f"<{count}h", *scaled)


class PCMSource:
    """Raw s16le 48 kHz stereo PCM from a file-like object, encoded frame by frame."""

    def __init__(
        self, stream: BinaryIO, *, encoder: OpusEncoder | None = None, volume: float = 1.0
    ) -> None:
        self.stream = stream
        self.encoder = encoder or OpusEncoder()
        self.volume = volume

    def read(self) -> bytes | None:
        pcm = self.stream.read(FRAME_BYTES)
        if not pcm:
            return None
        return self.encoder.encode(scale_volume(pcm, self.volume))

    def close(self) -> None:
        self.stream.close()

    def __iter__(self) -> Iterator[bytes]:
        while (frame := self.read()) is not None:
            yield frame


def ffmpeg_executable() -> str:
    """The ffmpeg that ``imageio-ffmpeg`` ships (a wheel with the binary inside), else one on
    PATH. Raises FileNotFoundError naming both places."""
    import shutil

    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:
        found = shutil.which("ffmpeg")
        if found:
            return found
    raise FileNotFoundError("no ffmpeg: install imageio-ffmpeg (pip) or put ffmpeg on PATH")


class FFmpegSource:
    """Any audio file ffmpeg can read (mp3, ogg, wav, flac...), decoded to 48 kHz stereo
    s16le by an ffmpeg child process and encoded to Opus frame by frame."""

    def __init__(
        self, path: str, *, encoder: OpusEncoder | None = None, volume: float = 1.0
    ) -> None:
        import subprocess

        self.path = path
        self.process = subprocess.Popen(
            [
                ffmpeg_executable(),
                "-nostdin",
                "-loglevel",
                "error",
                "-i",
                path,
                "-f",
                "s16le",
                "-ar",
                str(SAMPLE_RATE),
                "-ac",
                str(CHANNELS),
                "pipe:1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        stdout: Any = self.process.stdout
        self.pcm = PCMSource(stdout, encoder=encoder, volume=volume)

    @property
    def volume(self) -> float:
        return self.pcm.volume

    @volume.setter
    def volume(self, value: float) -> None:
        self.pcm.volume = value

    def read(self) -> bytes | None:
        frame = self.pcm.read()
        if frame is None and self._exit_status() not in (None, 0):
            assert self.process.stderr is not None
            error = self.process.stderr.read().decode(errors="replace").strip()
            raise ValueError(f"ffmpeg could not decode {self.path}: {error[:300]}")
        return frame

    def _exit_status(self) -> int | None:
        """ffmpeg's exit status once its output has ended. It closes stdout just before it
        exits, so wait for it briefly: a poll at that moment can miss a failure and play an
        undecodable file as an empty one."""
        import subprocess

        try:
            return self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.pcm.close()


def open_source(path: str, volume: float = 1.0) -> AudioSource:
    """Raw PCM for ``.pcm``/``.raw`` files; Ogg Opus with 20 ms packets passed through as
    it is (unless a volume other than 1 asks for decoding); ffmpeg for anything else."""
    lower = path.lower()
    if lower.endswith((".pcm", ".raw", ".s16le")):
        return PCMSource(open(path, "rb"), volume=volume)
    if lower.endswith((".opus", ".ogg", ".oga")) and volume == 1.0:
        from voiceworker.ogg import NotOggOpusError, OggOpusSource

        stream = open(path, "rb")
        try:
            return OggOpusSource(stream)
        except NotOggOpusError:
            stream.close()  # Vorbis, or other packet sizes: ffmpeg decodes it
    return FFmpegSource(path, volume=volume)
