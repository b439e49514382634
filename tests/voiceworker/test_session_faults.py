"""A voice session in process against a hostile voice server: it ends with the first cause,
no task exception is left unretrieved, and a dead loop is never reported connected."""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest

from tests.shards.helpers import eventually
from tests.voiceworker.test_session import new_session, voice_emulator
from voiceworker.session import VoiceError, _Datagram


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ({"ready": {"ip": "no.such.host.invalid"}}, "ip"),
        ({"ready": {"port": 0}}, "port"),
        ({"ready": {"ssrc": "x"}}, "ssrc"),
        ({"description": {"secret_key": list(range(16))}}, "secret_key"),
        ({"description": {"secret_key": 32}}, "secret_key"),
        ({"hello": {"heartbeat_interval": -1}}, "heartbeat_interval"),
        ({"close_on_identify": [4016]}, "4016"),
    ],
)
async def test_connect_fails_with_the_first_cause_and_nothing_unretrieved(
    fault: dict[str, Any], cause: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with voice_emulator() as emu:
        assert emu.voice is not None
        emu.voice.faults = fault
        session = await new_session(emu)
        with caplog.at_level(logging.WARNING), pytest.raises(VoiceError) as caught:
            await session.connect(timeout=5.0)
        assert cause in str(caught.value)
        assert session.failure is not None and cause in session.failure.message
        assert not session.connected.is_set()
        gc.collect()  # an unretrieved task exception is logged when its task is collected
    assert "never retrieved" not in caplog.text


async def test_a_crash_inside_the_loop_ends_the_session_and_says_why() -> None:
    async with voice_emulator() as emu:
        session = await new_session(emu)
        await session.connect()
        try:

            def explode(message: Any) -> None:
                raise RuntimeError("boom")

            session._on_udp = explode  # type: ignore[method-assign]
            assert session.udp is not None
            session.inbox.put(_Datagram(b"x" * 20))
            await eventually(lambda: session.ended.is_set())
            assert not session.connected.is_set()
            assert session.failure is not None and "boom" in session.failure.message
        finally:
            await session.leave()


async def test_a_voice_server_that_crashes_again_and_again_is_given_up() -> None:
    from voiceworker.session import MAX_RECONNECTS

    async with voice_emulator() as emu:
        assert emu.voice is not None
        session = await new_session(emu)
        await session.connect()
        try:
            for n in range(MAX_RECONNECTS + 1):
                await eventually(lambda: session.state.value == "connected", timeout=10)
                resumes = emu.voice.resumes()
                await emu.voice.close_session(4015, "crashed")  # resumable: the session resumes
                if n < MAX_RECONNECTS:
                    await emu.voice.wait_until(lambda r=resumes: emu.voice.resumes() > r)  # type: ignore[union-attr]
            await eventually(lambda: session.ended.is_set(), timeout=10)
            assert session.failure is not None
            assert "dropped" in session.failure.message and "4015" in session.failure.message
        finally:
            await session.leave()
