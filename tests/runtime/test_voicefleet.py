"""The supervisor's voice decisions without processes: joins routed to the owning shard,
refusals that say why, deadlines that fail a join, and rejoins held by the op 4 budget."""

from __future__ import annotations

from typing import Any

import pytest

from ipc.commands import UpdateVoiceState
from ipc.messages import ErrorCode, ErrorReply, Event, Message, Routed
from ipc.requests import JoinVoice, PlayAudio
from ipc.states import ShardState, VoiceState
from ipc.voice import VoiceFailure
from runtime.config import parse_config
from runtime.routing import shard_of_guild
from runtime.voicefleet import VoiceFleet
from runtime.voicepolicy import JOIN_TIMEOUT, OP4_PER_MINUTE

GUILD = 81384788765712384
CHANNEL = 81384788765712999


class Harness:
    def __init__(self, tmp_path: Any, shards: dict[int, ShardState | None] | None = None) -> None:
        self.shards: dict[int, ShardState | None] = shards or {
            0: ShardState.READY,
            1: ShardState.READY,
        }
        self.sent: list[tuple[str, Message]] = []
        self.published: list[Event] = []
        self.now = 0.0
        self.fleet = VoiceFleet(
            parse_config({}),
            tmp_path,
            2,
            shard_state=lambda shard: self.shards.get(shard),
            send=lambda identity, message: self.sent.append((identity, message)),
            publish=self.published.append,
            control="ipc:///x",
            bus_in="ipc:///y",
            preexec=lambda: None,
            clock=lambda: self.now,
        )


SHARD = shard_of_guild(GUILD, 2)


async def test_a_join_asks_the_owning_shard_for_op_4(tmp_path: Any) -> None:
    h = Harness(tmp_path)
    reply = await h.fleet.on_join(JoinVoice(guild_id=GUILD, channel_id=CHANNEL), {})
    assert isinstance(reply, Routed) and reply.routed == f"shard:{SHARD}"
    assert h.sent == [(f"shard:{SHARD}", UpdateVoiceState(GUILD, CHANNEL))]
    assert h.fleet.sessions[GUILD].state is VoiceState.JOINING


@pytest.mark.parametrize(
    ("state", "why", "code"),
    [
        (None, "not run here", ErrorCode.UNROUTABLE),
        (ShardState.CONNECTING, "which is down (connecting)", ErrorCode.UNAVAILABLE),
    ],
)
async def test_a_join_on_a_shard_that_cannot_send_is_refused(
    tmp_path: Any, state: ShardState | None, why: str, code: ErrorCode
) -> None:
    h = Harness(tmp_path, shards={SHARD: state})
    reply = await h.fleet.on_join(JoinVoice(guild_id=GUILD, channel_id=CHANNEL), {})
    assert isinstance(reply, ErrorReply) and reply.error_code is code and why in reply.error
    assert h.sent == [] and h.fleet.sessions == {}  # nothing was asked of Discord


async def test_play_before_the_voice_process_connects_says_so(tmp_path: Any) -> None:
    h = Harness(tmp_path)
    await h.fleet.on_join(JoinVoice(guild_id=GUILD, channel_id=CHANNEL), {})
    reply = await h.fleet.on_request(PlayAudio(guild_id=GUILD, path="/x.pcm"), {})
    assert isinstance(reply, ErrorReply) and "not connected" in reply.error
    assert "(joining)" in reply.error


async def test_a_join_discord_never_answers_fails_and_leaves(tmp_path: Any) -> None:
    h = Harness(tmp_path)
    await h.fleet.on_join(JoinVoice(guild_id=GUILD, channel_id=CHANNEL), {})
    voice = h.fleet.sessions[GUILD]
    assert voice.join_deadline is not None
    h.fleet.tick(voice.join_deadline - 0.1)
    assert voice.state is VoiceState.JOINING
    h.fleet.tick(voice.join_deadline + JOIN_TIMEOUT)
    assert voice.state is VoiceState.FAILED and "no voice state and server" in voice.error
    (failure,) = h.published
    assert isinstance(failure, VoiceFailure) and failure.guild_id == GUILD
    assert h.sent[-1] == (f"shard:{SHARD}", UpdateVoiceState(GUILD, None))


async def test_rejoins_wait_for_the_op_4_budget(tmp_path: Any) -> None:
    h = Harness(tmp_path)
    await h.fleet.on_join(JoinVoice(guild_id=GUILD, channel_id=CHANNEL), {})
    for _ in range(OP4_PER_MINUTE - 1):  # the bot's own joins spent the minute
        h.fleet.op4_budget.record(SHARD, 0.0)
    voice = h.fleet.sessions[GUILD]
    voice.join_deadline = None
    voice.rejoin_at = 1.0
    before = len(h.sent)
    h.fleet.tick(1.0)
    assert len(h.sent) == before and voice.rejoin_at is not None and voice.rejoin_at > 1.0
    h.fleet.tick(61.0)  # the minute has passed
    assert h.sent[-1] == (f"shard:{SHARD}", UpdateVoiceState(GUILD, CHANNEL))
    assert voice.rejoin_at is None and voice.join_deadline == 61.0 + JOIN_TIMEOUT
