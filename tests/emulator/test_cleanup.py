"""The emulator leaves nothing behind in the temp dir (its voice certificate's private key
included)."""

from __future__ import annotations

from pathlib import Path

from emulator import Emulator, EmulatorConfig


async def test_the_voice_certificate_directory_is_removed_on_close() -> None:
    async with Emulator(EmulatorConfig()) as emu:
        assert emu.voice is not None
        directory = Path(emu.voice.ca_file).parent
        assert directory.is_dir() and any(directory.iterdir())
    assert not directory.exists()
