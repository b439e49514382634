"""A voice session against the emulator's voice server: join, speak, and the server decrypts
every frame (both AEAD modes), in order, 960 samples apart, ending in five silence frames."""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import ssl
import struct
from typing import Any

import pytest

from emulator import Emulator, EmulatorConfig, GatewayRules, WorldConfig
from tests.emulator.client import PlainClient
from tests.shards.helpers import eventually
from voiceworker.audio import SILENCE, PCMSource
from voiceworker.crypto import AES_GCM, XCHACHA, aes_gcm_available
from voiceworker.gateway import VoiceCredentials
from voiceworker.session import VoiceSession

MODES = [XCHACHA] + ([AES_GCM] if aes_gcm_available() else [])


def tone(frames: int) -> bytes:
    n = 960 * frames
    return b"".join(
        struct.pack("<hh", v, v)
        for v in (int(6000 * math.sin(2 * math.pi * 330 * i / 48_000)) for i in range(n))
    )


async def join(emu: Emulator) -> VoiceCredentials:
    """What a shard does for a join: op 4, then collect the two answers."""
    client = await PlainClient.open(emu.gateway_url)
    await client.hello_and_ready(intents=1 << 7)
    guild = emu.world.guild_ids[0]
    await client.send(
        4,
        {
            "guild_id": str(guild),
            "channel_id": str(emu.world.voice_channel_id(guild)),
            "self_mute": False,
            "self_deaf": False,
        },
    )
    state = (await client.recv_until("VOICE_STATE_UPDATE"))[-1]["d"]
    server = (await client.recv_until("VOICE_SERVER_UPDATE"))[-1]["d"]
    return VoiceCredentials.from_gateway(state, server)


def voice_emulator() -> Emulator:
    """An emulator with one guild and its voice server."""
    return Emulator(
        EmulatorConfig(rules=GatewayRules(identify_interval=0), world=WorldConfig(guilds=1))
    )


async def new_session(emu: Emulator, **options: Any) -> VoiceSession:
    """A session with credentials from a gateway join, trusting the emulator's certificate."""
    assert emu.voice is not None
    context = ssl.create_default_context(cafile=emu.voice.ca_file)
    return VoiceSession(await join(emu), ssl_context=context, **options)


@pytest.mark.parametrize("mode", MODES)
async def test_join_speak_and_the_server_decrypts_every_frame(mode: str) -> None:
    async with voice_emulator() as emu:
        assert emu.voice is not None
        credentials = await join(emu)
        context = ssl.create_default_context(cafile=emu.voice.ca_file)
        session = VoiceSession(credentials, ssl_context=context, modes=(mode,))
        await session.connect()
        try:
            sent = await session.play(PCMSource(io.BytesIO(tone(10))))
            assert sent == 15
            record = next(iter(emu.voice.sessions.values()))
            await emu.voice.wait_until(lambda: len(record.packets) == 15)
        finally:
            await session.leave()
        assert record.mode == mode and record.undecryptable == 0
        seqs = [p.seq for p in record.packets]
        stamps = [p.timestamp for p in record.packets]
        assert seqs == list(range(seqs[0], seqs[0] + 15))
        assert [b - a for a, b in itertools.pairwise(stamps)] == [960] * 14
        assert [p.opus for p in record.packets[-5:]] == [SILENCE] * 5
        assert record.speaking[0] == 1  # SPEAKING before the first packet
        gaps = [
            b.arrival - a.arrival for a, b in zip(record.packets, record.packets[1:], strict=False)
        ]
        assert sum(gaps) == pytest.approx(14 * 0.020, abs=0.2)  # paced by the clock, not bursted


async def test_a_bad_token_is_refused() -> None:
    async with voice_emulator() as emu:
        assert emu.voice is not None
        good = await join(emu)
        bad = VoiceCredentials(
            good.guild_id, good.user_id, good.session_id, "nope", good.endpoint, good.channel_id
        )
        session = VoiceSession(
            bad, ssl_context=ssl.create_default_context(cafile=emu.voice.ca_file)
        )
        with pytest.raises(Exception, match="4004"):
            await session.connect()


async def test_resume_after_4015_and_clean_end_on_4014() -> None:
    async with voice_emulator() as emu:
        session = await new_session(emu)
        await session.connect()
        try:
            assert await emu.voice.close_session(4015, "crashed") == 1
            await emu.voice.wait_until(lambda: emu.voice.resumes() == 1)  # type: ignore[union-attr]
            await emu.voice.wait_until(lambda: len(emu.voice.connections) == 1)  # type: ignore[union-attr]
            await eventually(lambda: session.state.value == "connected")  # RESUMED arrived
            assert session.connected.is_set()
            await session.play(PCMSource(io.BytesIO(tone(3))))  # audio still flows
            record = next(iter(emu.voice.sessions.values()))
            await emu.voice.wait_until(lambda: len(record.packets) == 8)
            assert record.undecryptable == 0
            await emu.voice.close_session(4014, "moved")
            await asyncio.wait_for(session.connected_lost(), 10)
            assert session.state.value == "waiting for server"
            assert session.failure is not None and "4014" in session.failure.message
        finally:
            await session.leave()


def test_the_library_walkthrough_example_runs() -> None:
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "voice_session.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "played 55 frames; the voice server decrypted 55"


async def test_udp_keepalives_flow_while_idle() -> None:
    async with voice_emulator() as emu:
        session = await new_session(emu, keepalive_interval=0.05)
        await session.connect()
        try:
            await eventually(lambda: emu.voice.keepalives >= 3)  # type: ignore[union-attr]
        finally:
            await session.leave()


async def test_pause_sends_silence_then_resume_continues_with_the_clock() -> None:
    async with voice_emulator() as emu:
        session = await new_session(emu)
        await session.connect()
        try:
            source = PCMSource(io.BytesIO(tone(30)))
            playing = asyncio.create_task(session.play(source))
            record = None
            await emu.voice.wait_until(
                lambda: any(len(r.packets) >= 10 for r in emu.voice.sessions.values())  # type: ignore[union-attr]
            )
            record = next(iter(emu.voice.sessions.values()))
            session.set_volume(0.5)  # an inbox item: the loop applies it between frames
            await eventually(lambda: source.volume == 0.5)
            session.pause()
            await emu.voice.wait_until(
                lambda: [p.opus for p in record.packets[-5:]] == [SILENCE] * 5  # type: ignore[union-attr]
            )
            at_pause = len(record.packets)
            assert session.paused and record.speaking[-1] == 0
            session.resume()
            sent = await asyncio.wait_for(playing, 10)
            await emu.voice.wait_until(lambda: len(record.packets) == sent)  # type: ignore[union-attr]
        finally:
            await session.leave()
        assert sent == 30 + 5 + 5  # the tone, silence at the pause, silence at the end
        assert record.speaking[-2:] == [1, 0]
        resumed = record.packets[at_pause]
        before = record.packets[at_pause - 1]
        assert resumed.seq == before.seq + 1  # seq continues
        assert resumed.timestamp - before.timestamp >= 960  # the timestamp kept real time
        assert record.undecryptable == 0


async def test_receiving_maps_ssrc_to_the_member_and_survives_garbage() -> None:
    from voiceworker.audio import OpusEncoder

    async with voice_emulator() as emu:
        session = await new_session(emu)
        heard: list[tuple[int, bytes]] = []
        session.on_audio = lambda user, opus: heard.append((user, opus))
        await session.connect()
        try:
            # the server learns our UDP address from discovery; garbage first, then a member
            assert session.udp is not None
            encoder = OpusEncoder()
            pcm = tone(5)
            frames = [encoder.encode(pcm[i * 3840 : (i + 1) * 3840]) for i in range(5)]
            transport = emu.voice._udp.transport  # type: ignore[union-attr]
            record = next(iter(emu.voice.sessions.values()))
            assert record.client_address is not None and transport is not None
            transport.sendto(b"\x80\x78" + bytes(40), record.client_address)  # undecryptable
            assert await emu.voice.member_speaks(4242, frames) == 5
            await eventually(lambda: len(heard) == 5)
        finally:
            await session.leave()
        assert heard == [(4242, frame) for frame in frames]
        assert session.undecryptable == 1 and session.state.value != "disconnected"


async def test_record_writes_one_wav_per_member(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import wave

    from voiceworker.audio import OpusEncoder
    from voiceworker.recorder import Recorder

    async with voice_emulator() as emu:
        session = await new_session(emu)
        recorder = Recorder(tmp_path / "rec")
        session.on_audio = recorder.on_audio
        await session.connect()
        try:
            encoder = OpusEncoder()
            pcm = tone(8)
            frames = [encoder.encode(pcm[i * 3840 : (i + 1) * 3840]) for i in range(8)]
            await emu.voice.member_speaks(7, frames)
            await emu.voice.member_speaks(8, frames[:3])
            await eventually(lambda: recorder.frames == {7: 8, 8: 3})
        finally:
            await session.leave()
            recorder.close()
        with wave.open(str(recorder.path(7))) as w:
            assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 48_000, 8 * 960)
        with wave.open(str(recorder.path(8))) as w:
            assert w.getnframes() == 3 * 960


async def test_ogg_opus_plays_without_reencoding(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.voiceworker.media import sine_opus
    from voiceworker.audio import open_source
    from voiceworker.ogg import OggOpusSource, ogg_packets

    path = sine_opus(tmp_path / "clip.opus", seconds=0.4, frequency=330)
    with open(path, "rb") as f:
        in_file = [p for p in ogg_packets(f)][2:]  # after OpusHead and OpusTags
    async with voice_emulator() as emu:
        session = await new_session(emu)
        await session.connect()
        try:
            source = open_source(str(path))
            assert isinstance(source, OggOpusSource)
            sent = await session.play(source)
            record = next(iter(emu.voice.sessions.values()))  # type: ignore[union-attr]
            await emu.voice.wait_until(lambda: len(record.packets) == sent)  # type: ignore[union-attr]
        finally:
            await session.leave()
    assert [p.opus for p in record.packets] == in_file + [SILENCE] * 5  # byte for byte


async def test_udp_silence_reconnects_with_a_fresh_identify() -> None:
    async with voice_emulator() as emu:
        assert emu.voice is not None
        server = emu.voice
        session = await new_session(emu, keepalive_interval=0.02, udp_silence_limit=10)
        await session.connect()
        try:
            await eventually(lambda: session._keepalive_echoed > 0)  # the server echoes
            server.udp_deaf = True  # UDP lost both ways
            await server.wait_until(lambda: len(server.sessions) == 2)  # identified again
            assert session.udp_reconnects == 1
            server.udp_deaf = False
            await eventually(lambda: session.state.value == "connected" and session.cipher)
            record = next(r for r in server.sessions.values() if r.ssrc == session.rtp.ssrc)  # type: ignore[union-attr]
            await session.play(PCMSource(io.BytesIO(tone(2))))
            await server.wait_until(lambda: len(record.packets) == 7)
        finally:
            await session.leave()
        assert record.undecryptable == 0 and server.resumes() == 0
