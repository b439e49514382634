"""DAVE end to end against the emulator: the bot's session and an emulated call member
(built on davey) form an MLS group through the emulator's external sender, and each hears
the other's frames only through end-to-end encryption."""

from __future__ import annotations

import io
import ssl
from typing import Any

import pytest

from emulator import Emulator, EmulatorConfig, GatewayRules, WorldConfig
from tests.shards.helpers import eventually
from tests.voiceworker.test_session import MODES, join, tone
from voiceworker.audio import SILENCE, OpusEncoder, PCMSource
from voiceworker.session import VoiceSession

MEMBER = 4242


def emulator(**options: Any) -> Emulator:
    return Emulator(
        EmulatorConfig(
            rules=GatewayRules(identify_interval=0), world=WorldConfig(guilds=1), **options
        )
    )


async def connect(emu: Emulator, **options: Any) -> VoiceSession:
    assert emu.voice is not None
    context = ssl.create_default_context(cafile=emu.voice.ca_file)
    session = VoiceSession(await join(emu), ssl_context=context, **options)
    await session.connect()
    return session


def channel(emu: Emulator) -> int:
    return emu.world.voice_channel_id(emu.world.guild_ids[0])


def frames(n: int) -> list[bytes]:
    encoder, pcm = OpusEncoder(), tone(n)
    return [encoder.encode(pcm[i * 3840 : (i + 1) * 3840]) for i in range(n)]


async def play_and_collect(emu: Emulator, session: VoiceSession, n: int) -> list[Any]:
    """Play ``n`` frames of a tone; the server's record of them (with five silence frames)."""
    assert emu.voice is not None
    record = emu.voice.sessions[session.gateway.session.ssrc]
    before = len(record.packets)
    await session.play(PCMSource(io.BytesIO(tone(n))))
    await emu.voice.wait_until(lambda: len(record.packets) == before + n + 5)
    return record.packets[before:]


@pytest.mark.parametrize("mode", MODES)
async def test_bot_commits_the_member_in_and_its_frames_decrypt_end_to_end(mode: str) -> None:
    async with emulator() as emu:
        assert emu.voice is not None
        session = await connect(emu, modes=(mode,))
        try:
            assert session.dave.version == 1 and not session.dave.active  # alone: no group
            member = await emu.voice.add_member(channel(emu), MEMBER)
            await eventually(lambda: session.dave.active and member.ready)
            record = emu.voice.sessions[session.gateway.session.ssrc]
            assert 28 in record.binary_ops  # we committed the member in (op 28)
            packets = await play_and_collect(emu, session, 10)
        finally:
            await session.leave()
        expected = frames(10)
        assert [p.e2ee for p in packets] == [True] * 10 + [False] * 5  # silence stays plain
        assert [p.opus for p in packets] == expected + [SILENCE] * 5  # decrypted by the member
        assert record.e2ee_undecryptable == 0 and record.undecryptable == 0
        assert session.dave.transitions >= 1


async def test_a_member_already_there_welcomes_the_bot_and_is_heard() -> None:
    async with emulator() as emu:
        assert emu.voice is not None
        member = await emu.voice.add_member(channel(emu), MEMBER)
        session = await connect(emu)
        heard: list[tuple[int, bytes]] = []
        session.on_audio = lambda user, opus: heard.append((user, opus))
        try:
            await eventually(lambda: session.dave.active and member.ready)
            record = emu.voice.sessions[session.gateway.session.ssrc]
            assert 28 not in record.binary_ops  # the member committed; we were welcomed
            assert session.dave.users == {MEMBER}  # clients connect (op 11) named it
            spoken = frames(6)
            await emu.voice.member_speaks(MEMBER, spoken)
            await eventually(lambda: len(heard) == 6)
            packets = await play_and_collect(emu, session, 4)
        finally:
            await session.leave()
        assert heard == [(MEMBER, f) for f in spoken]  # E2EE on the wire, plain to us
        assert all(p.e2ee for p in packets[:4])
        assert [p.opus for p in packets[:4]] == frames(4)


async def test_protocol_version_0_sends_without_e2ee() -> None:
    async with emulator(dave=False) as emu:
        assert emu.voice is not None
        await emu.voice.add_member(channel(emu), MEMBER)
        session = await connect(emu)
        try:
            packets = await play_and_collect(emu, session, 5)
        finally:
            await session.leave()
        assert session.dave.version == 0 and not session.dave.active
        assert not any(p.e2ee for p in packets)
        assert [p.opus for p in packets] == frames(5) + [SILENCE] * 5


async def test_an_unusable_welcome_is_reported_and_the_bot_rejoins_the_group() -> None:
    async with emulator() as emu:
        assert emu.voice is not None
        member = await emu.voice.add_member(channel(emu), MEMBER)
        emu.voice.calls[channel(emu)].corrupt_next_welcome = True
        session = await connect(emu)
        try:
            await eventually(lambda: session.dave.active and member.ready)
            record = emu.voice.sessions[session.gateway.session.ssrc]
            assert [p["op"] for p in record.received if p["op"] == 31] == [31]
            assert record.binary_ops.count(26) == 2  # a fresh key package after op 31
            assert session.dave.invalid_commits == 1
            assert emu.voice.calls[channel(emu)].epoch == 2  # removed and re-added
            packets = await play_and_collect(emu, session, 3)
        finally:
            await session.leave()
        assert [p.opus for p in packets[:3]] == frames(3) and all(p.e2ee for p in packets[:3])


async def test_dave_survives_a_resume_and_a_required_dave_server_accepts_us() -> None:
    async with emulator(require_dave=True) as emu:
        assert emu.voice is not None
        member = await emu.voice.add_member(channel(emu), MEMBER)
        session = await connect(emu)
        try:
            await eventually(lambda: session.dave.active and member.ready)
            await emu.voice.close_session(4015, "crashed")
            await emu.voice.wait_until(lambda: emu.voice.resumes() == 1)  # type: ignore[union-attr]
            await eventually(lambda: session.state.value == "connected")
            packets = await play_and_collect(emu, session, 3)
        finally:
            await session.leave()
        assert [p.opus for p in packets[:3]] == frames(3) and all(p.e2ee for p in packets[:3])


async def test_a_member_leaving_is_removed_and_the_call_goes_on() -> None:
    async with emulator() as emu:
        assert emu.voice is not None
        first = await emu.voice.add_member(channel(emu), MEMBER)
        session = await connect(emu)
        try:
            await eventually(lambda: session.dave.active and first.ready)
            second = await emu.voice.add_member(channel(emu), MEMBER + 1)
            await eventually(lambda: second.ready and session.dave.users == {MEMBER, MEMBER + 1})
            await emu.voice.remove_member(channel(emu), MEMBER)
            await eventually(lambda: session.dave.users == {MEMBER + 1})
            call = emu.voice.calls[channel(emu)]
            await eventually(lambda: not call.transitions and MEMBER not in call.leaves)
            packets = await play_and_collect(emu, session, 3)
        finally:
            await session.leave()
        assert [p.opus for p in packets[:3]] == frames(3) and all(p.e2ee for p in packets[:3])
