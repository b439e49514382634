"""Typed commands sent to the gateway. Each declares its opcode; ``raw`` is the payload's ``d``."""

from __future__ import annotations

from typing import Any

from ipc.fields import (
    InvalidFieldError,
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

STATUSES = ("online", "dnd", "idle", "invisible", "offline")
ACTIVITY_TYPES = range(6)  # playing, streaming, listening, watching, custom, competing
MAX_ACTIVITIES = 16


class Heartbeat(GatewayCommand):
    """op 1: ``d`` is the last sequence number received, or null."""

    __slots__ = ()
    op = 1
    type_name = "HEARTBEAT"
    from_applications = False

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
    from_applications = False
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
    from_applications = False
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

    def check(self) -> None:
        if self.raw["status"] not in STATUSES:
            raise InvalidFieldError("status", f"must be one of {', '.join(STATUSES)}")
        since = self.raw.get("since")
        if since is not None and (type(since) is not int or since < 0):
            raise InvalidFieldError("since", "must be null or a time in milliseconds")
        activities = self.raw.get("activities", [])
        if not isinstance(activities, list) or len(activities) > MAX_ACTIVITIES:
            raise InvalidFieldError("activities", f"must be a list of {MAX_ACTIVITIES} at most")
        for n, activity in enumerate(activities):
            where = f"activities[{n}]"
            if not isinstance(activity, dict):
                raise InvalidFieldError(where, "must be an object")
            name, kind = activity.get("name"), activity.get("type")
            if not isinstance(name, str) or not 0 < len(name) <= 128:
                raise InvalidFieldError(f"{where}.name", "must be a string of 1-128 characters")
            if type(kind) is not int or kind not in ACTIVITY_TYPES:
                raise InvalidFieldError(f"{where}.type", "must be an activity type from 0 to 5")


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

    def check(self) -> None:
        raw = self.raw
        if ("query" in raw) == ("user_ids" in raw):
            raise InvalidFieldError("query", "or user_ids is required, and only one of them")
        if len(raw.get("user_ids", [])) > 100:
            raise InvalidFieldError("user_ids", "may name 100 users at most")
        if not 0 <= raw.get("limit", 0) <= 100_000:
            raise InvalidFieldError("limit", "must be from 0 (all members) to 100000")
        nonce = raw.get("nonce")
        if nonce is not None and len(nonce.encode()) > 32:
            raise InvalidFieldError("nonce", "may be 32 bytes at most")


class RequestSoundboardSounds(GatewayCommand):
    """op 31: answered by SOUNDBOARD_SOUNDS dispatches."""

    __slots__ = ()
    op = 31
    type_name = "REQUEST_SOUNDBOARD_SOUNDS"
    guild_ids = snowflake_list()

    def check(self) -> None:
        if not self.raw.get("guild_ids"):
            raise InvalidFieldError("guild_ids", "must name at least one guild")
