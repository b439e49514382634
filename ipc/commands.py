"""Typed commands sent to the gateway. Each declares its opcode; ``raw`` is the payload's ``d``."""

from __future__ import annotations

from typing import Any

from ipc.fields import (
    boolean,
    integer,
    optional_snowflake,
    optional_string,
    raw,
    snowflake,
    snowflake_list,
    string,
)
from ipc.messages import GatewayCommand

__all__ = [
    "Heartbeat",
    "Identify",
    "RequestGuildMembers",
    "RequestSoundboardSounds",
    "Resume",
    "UpdatePresence",
    "UpdateVoiceState",
]


class Heartbeat(GatewayCommand):
    """op 1: ``d`` is the last sequence number received, or null."""

    __slots__ = ()
    op = 1
    type_name = "HEARTBEAT"

    def __init__(self, seq: int | None) -> None:
        self.raw = seq

    @property
    def seq(self) -> int | None:
        return self.raw if self.raw is None else int(self.raw)


class Identify(GatewayCommand):
    """op 2: start a new session. Build it with ``shard=[id, count]`` and ``intents`` as an int."""

    __slots__ = ()
    op = 2
    type_name = "IDENTIFY"
    token = string()
    properties = raw()
    intents = integer()
    shard = raw()
    compress = boolean(default=False)
    large_threshold = integer(default=50)
    presence = raw()

    def __repr__(self) -> str:  # never show the token
        return f"Identify(shard={self.shard!r}, intents={self.intents!r}, token=<redacted>)"


class Resume(GatewayCommand):
    """op 6: resume a session; the server replays what was missed, then RESUMED."""

    __slots__ = ()
    op = 6
    type_name = "RESUME"
    token = string()
    session_id = string()
    seq = integer()

    def __repr__(self) -> str:
        return f"Resume(session_id={self.session_id!r}, seq={self.seq!r}, token=<redacted>)"


class UpdatePresence(GatewayCommand):
    """op 3: ``since`` (ms or null), ``activities``, ``status``, ``afk``."""

    __slots__ = ()
    op = 3
    type_name = "UPDATE_PRESENCE"
    since = raw()
    activities = raw(default=[])
    status = string()
    afk = boolean(default=False)

    def __init__(
        self,
        status: str = "online",
        activities: list[dict[str, Any]] | None = None,
        *,
        afk: bool = False,
        since: int | None = None,
    ) -> None:
        self.raw = {"since": since, "activities": activities or [], "status": status, "afk": afk}


class UpdateVoiceState(GatewayCommand):
    """op 4: join, move or (``channel_id=None``) leave a voice channel."""

    __slots__ = ()
    op = 4
    type_name = "UPDATE_VOICE_STATE"
    guild_id = snowflake()
    channel_id = optional_snowflake()
    self_mute = boolean(default=False)
    self_deaf = boolean(default=False)

    def __init__(
        self,
        guild_id: int,
        channel_id: int | None,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> None:
        self.raw = {
            "guild_id": str(guild_id),
            "channel_id": None if channel_id is None else str(channel_id),
            "self_mute": self_mute,
            "self_deaf": self_deaf,
        }


class RequestGuildMembers(GatewayCommand):
    """op 8: answered by GUILD_MEMBERS_CHUNK dispatches carrying the same ``nonce``."""

    __slots__ = ()
    op = 8
    type_name = "REQUEST_GUILD_MEMBERS"
    guild_id = snowflake()
    query = optional_string()
    limit = integer(default=0)
    presences = boolean(default=False)
    user_ids = snowflake_list()
    nonce = optional_string()


class RequestSoundboardSounds(GatewayCommand):
    """op 31: answered by SOUNDBOARD_SOUNDS dispatches."""

    __slots__ = ()
    op = 31
    type_name = "REQUEST_SOUNDBOARD_SOUNDS"
    guild_ids = snowflake_list()
