"""Commands from applications are checked against their class before they reach Discord."""

from __future__ import annotations

from typing import Any

import pytest

from ipc.commands import (
    Identify,
    RequestGuildMembers,
    RequestSoundboardSounds,
    UpdatePresence,
    UpdateVoiceState,
)
from ipc.fields import InvalidFieldError
from ipc.messages import GatewayCommand


def test_well_formed_commands_pass() -> None:
    UpdatePresence("idle", [{"name": "chess", "type": 0}], since=12).validate()
    UpdateVoiceState(81384788765712384, None).validate()
    RequestGuildMembers(guild_id=1, user_ids=[2, 3], nonce="n").validate()
    RequestGuildMembers(guild_id=1, query="", limit=0).validate()
    RequestSoundboardSounds(guild_ids=[1]).validate()


@pytest.mark.parametrize(
    ("cls", "body", "field"),
    [
        (UpdatePresence, [1, 2], "<body>"),
        (UpdatePresence, {"status": "online", "activities": [], "afk": "no"}, "afk"),
        (UpdatePresence, {"status": "busy", "activities": []}, "status"),
        (UpdatePresence, {"status": "online", "activities": [{"name": "x"}]}, "activities[0].type"),
        (UpdatePresence, {"status": "online", "activities": [{"name": "", "type": 0}]}, "name"),
        (UpdatePresence, {"status": "online", "activities": 5}, "activities"),
        (UpdatePresence, {"status": "online", "since": -1}, "since"),
        (UpdatePresence, {"activities": []}, "status"),
        (UpdatePresence, {"status": "online", "evil": 1}, "evil"),
        (UpdateVoiceState, {"guild_id": "abc", "channel_id": None}, "guild_id"),
        (UpdateVoiceState, {"guild_id": "0", "channel_id": None}, "guild_id"),
        (UpdateVoiceState, {"guild_id": str(2**64), "channel_id": None}, "guild_id"),
        (UpdateVoiceState, {"guild_id": "1", "channel_id": "1e5"}, "channel_id"),
        (UpdateVoiceState, {"guild_id": "1", "channel_id": None, "self_mute": None}, "self_mute"),
        (UpdateVoiceState, {"guild_id": True, "channel_id": None}, "guild_id"),
        (RequestGuildMembers, {"guild_id": "1"}, "query"),
        (RequestGuildMembers, {"guild_id": "1", "query": "", "user_ids": []}, "query"),
        (RequestGuildMembers, {"guild_id": "1", "user_ids": ["x"]}, "user_ids"),
        (
            RequestGuildMembers,
            {"guild_id": "1", "user_ids": [str(i + 1) for i in range(101)]},
            "user_ids",
        ),
        (RequestGuildMembers, {"guild_id": "1", "query": "", "limit": 1.5}, "limit"),
        (RequestGuildMembers, {"guild_id": "1", "query": "", "nonce": "n" * 33}, "nonce"),
        (RequestGuildMembers, {"guild_id": "1", "query": 5}, "query"),
        (RequestSoundboardSounds, {"guild_ids": []}, "guild_ids"),
    ],
)
def test_each_bad_field_is_named(cls: type[GatewayCommand], body: Any, field: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        cls.from_raw(body).validate()
    assert field in str(caught.value)


def test_what_only_a_shard_sends_is_not_for_applications() -> None:
    assert not Identify.from_applications
    assert UpdatePresence.from_applications
