"""Recording what other members say: one WAV file per user (48 kHz stereo s16le)."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

from voiceworker.audio import CHANNELS, SAMPLE_RATE, opus_library

__all__ = ["Recorder"]


class Recorder:
    """Decodes each member's Opus frames and appends them to ``<directory>/<user_id>.wav``.
    Hand :meth:`on_audio` to ``VoiceSession.on_audio``; :meth:`close` finishes the files."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._opus = opus_library()
        self._decoders: dict[int, Any] = {}
        self._files: dict[int, wave.Wave_write] = {}
        self.frames: dict[int, int] = {}

    def on_audio(self, user_id: int, opus: bytes) -> None:
        decoder = self._decoders.get(user_id)
        if decoder is None:
            decoder = self._decoders[user_id] = self._opus.Decoder(SAMPLE_RATE, CHANNELS)
            out = wave.open(str(self.path(user_id)), "wb")
            out.setnchannels(CHANNELS)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            self._files[user_id] = out
        try:
            pcm = decoder.decode(opus, 960)
        except Exception:  # a corrupt frame: skipped, the recording goes on
            return
        self._files[user_id].writeframes(pcm)
        self.frames[user_id] = self.frames.get(user_id, 0) + 1

    def path(self, user_id: int) -> Path:
        return self.directory / f"{user_id}.wav"

    def close(self) -> None:
        for out in self._files.values():
            out.close()
        self._files.clear()
