"""Audio files for the voice tests, made by the ffmpeg the install path provides."""

from __future__ import annotations

import subprocess
from pathlib import Path

from voiceworker.audio import ffmpeg_executable


def sine_opus(path: Path, *, seconds: float, frequency: int, frame_ms: int = 20) -> Path:
    """A 48 kHz stereo sine tone as Ogg Opus with ``frame_ms`` packets, written to ``path``."""
    subprocess.run(
        [
            *(ffmpeg_executable(), "-nostdin", "-loglevel", "error", "-f", "lavfi"),
            *("-i", f"sine=frequency={frequency}:duration={seconds}", "-ar", "48000", "-ac", "2"),
            *("-c:a", "libopus", "-frame_duration", str(frame_ms), str(path)),
        ],
        check=True,
    )
    return path
