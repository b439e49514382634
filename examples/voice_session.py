"""Using the voice worker as a library: one guild's voice connection in your own program.

A voice connection needs what your gateway connection gives you after you send op 4 (Update
Voice State): the ``session_id`` (and ``channel_id``, which names the call's DAVE group) of the
bot's VOICE_STATE_UPDATE, and the ``token`` and ``endpoint`` of the VOICE_SERVER_UPDATE. With
them:

    session = VoiceSession(VoiceCredentials.from_gateway(voice_state, voice_server))
    await session.connect()                      # voice gateway, UDP discovery, encryption
    await session.play(open_source("song.mp3"))  # SPEAKING, 20 ms frames, 5 silence frames
    await session.leave()

That is the whole API: no voice state to juggle, no separate UDP object, no heartbeat task
to keep alive — one loop owns the websocket, the UDP socket, the heartbeat and the send clock.
Under the supervisor you do not even write this: ``client.join_voice(guild, channel)`` and
``client.play(guild, path)`` run it in an isolated process.

Run it offline against the emulator (no token): ``python examples/voice_session.py [FILE]``.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
from websockets.asyncio.client import connect

from emulator import Emulator, EmulatorConfig
from voiceworker.audio import open_source
from voiceworker.gateway import VoiceCredentials
from voiceworker.session import VoiceSession


async def credentials_from_gateway(emu: Emulator) -> VoiceCredentials:
    """What your shard does: IDENTIFY, send op 4, read the two voice events."""
    guild = emu.world.guild_ids[0]
    async with connect(f"{emu.gateway_url}/?v=10&encoding=json") as ws:
        await ws.recv()  # HELLO
        await ws.send(
            orjson.dumps(
                {
                    "op": 2,
                    "d": {
                        "token": emu.rules.token,
                        "intents": 1 << 7,
                        "properties": {},
                        "shard": [0, 1],
                    },
                }
            ).decode()
        )
        channel = emu.world.voice_channel_id(guild)
        await ws.send(
            orjson.dumps(
                {
                    "op": 4,
                    "d": {
                        "guild_id": str(guild),
                        "channel_id": str(channel),
                        "self_mute": False,
                        "self_deaf": False,
                    },
                }
            ).decode()
        )
        state = server = None
        while state is None or server is None:
            payload = orjson.loads(await ws.recv())
            if payload.get("t") == "VOICE_STATE_UPDATE":
                state = payload["d"]
            elif payload.get("t") == "VOICE_SERVER_UPDATE":
                server = payload["d"]
    return VoiceCredentials.from_gateway(state, server)


def tone_file() -> str:
    path = Path(tempfile.gettempdir()) / "shardline-voice-example.pcm"
    samples = (int(6000 * math.sin(2 * math.pi * 523 * i / 48_000)) for i in range(48_000))
    path.write_bytes(b"".join(struct.pack("<hh", v, v) for v in samples))
    return str(path)


async def main(path: str) -> int:
    async with Emulator(EmulatorConfig(guilds=1)) as emu:
        assert emu.voice is not None
        credentials = await credentials_from_gateway(emu)
        # The emulator's voice server has its own certificate: trust it like any private CA.
        context = ssl.create_default_context(cafile=emu.voice.ca_file)
        session = VoiceSession(credentials, ssl_context=context)
        await session.connect()
        frames = await session.play(open_source(path))
        await session.leave()
        received = sum(len(r.packets) for r in emu.voice.sessions.values())
        print(f"played {frames} frames; the voice server decrypted {received}")
        return 0 if received == frames else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else tone_file())))
