"""Typed gateway events: each class declares its opcode and event type, and is registered.

``raw`` is the payload's ``d``. Dispatch classes also inherit the typed view of the object
Discord sends as ``d`` (a MESSAGE_CREATE *is* a message), so fields read straight off the event.
"""

from __future__ import annotations

from ipc.fields import (
    Struct,
    integer,
    optional_snowflake,
    optional_string,
    optional_struct,
    raw,
    snowflake,
    snowflake_list,
    string,
    struct,
    struct_list,
)
from ipc.messages import DispatchEvent, Event, GatewayEvent
from ipc.objects import (
    Channel,
    DiscordMessage,
    Guild,
    Member,
    PartialGuild,
    Presence,
    User,
    VoiceState,
)

__all__ = [
    "ChannelCreate",
    "ChannelDelete",
    "ChannelUpdate",
    "GuildCreate",
    "GuildDelete",
    "GuildMemberAdd",
    "GuildMemberRemove",
    "GuildMemberUpdate",
    "GuildMembersChunk",
    "HeartbeatAck",
    "HeartbeatRequest",
    "Hello",
    "InteractionCreate",
    "InvalidSession",
    "MessageCreate",
    "MessageDelete",
    "MessageUpdate",
    "PresenceUpdate",
    "RateLimited",
    "Ready",
    "Reconnect",
    "Resharded",
    "Resumed",
    "TypingStart",
    "VoiceServerUpdate",
    "VoiceStateUpdate",
]


# -- connection-level payloads (op != 0) ------------------------------------------------------


class Hello(GatewayEvent):
    """op 10: the first payload; says how often to heartbeat."""

    __slots__ = ()
    op = 10
    type_name = "HELLO"
    heartbeat_interval = integer()  # milliseconds


class HeartbeatRequest(GatewayEvent):
    """op 1 from the server: send a heartbeat now."""

    __slots__ = ()
    op = 1
    type_name = "HEARTBEAT"


class HeartbeatAck(GatewayEvent):
    """op 11: the server received our heartbeat."""

    __slots__ = ()
    op = 11
    type_name = "HEARTBEAT_ACK"


class Reconnect(GatewayEvent):
    """op 7: reconnect and resume."""

    __slots__ = ()
    op = 7
    type_name = "RECONNECT"


class InvalidSession(GatewayEvent):
    """op 9: ``d`` is whether the session may be resumed."""

    __slots__ = ()
    op = 9
    type_name = "INVALID_SESSION"

    def __init__(self, resumable: bool) -> None:
        self.raw = resumable

    @property
    def resumable(self) -> bool:
        return bool(self.raw)


# -- dispatches (op 0) ------------------------------------------------------------------------


class _Application(Struct):
    __slots__ = ()
    id = snowflake()
    flags = integer(default=0)


class Ready(DispatchEvent):
    __slots__ = ()
    type_name = "READY"
    v = integer()
    user = struct(User)
    guilds = struct_list(PartialGuild)
    session_id = string()
    resume_gateway_url = string()
    shard = raw()
    application = struct(_Application)


class Resumed(DispatchEvent):
    __slots__ = ()
    type_name = "RESUMED"


class GuildCreate(DispatchEvent, Guild):
    __slots__ = ()
    type_name = "GUILD_CREATE"


class GuildUpdate(DispatchEvent, Guild):
    __slots__ = ()
    type_name = "GUILD_UPDATE"


class GuildDelete(DispatchEvent, PartialGuild):
    __slots__ = ()
    type_name = "GUILD_DELETE"


class MessageCreate(DispatchEvent, DiscordMessage):
    __slots__ = ()
    type_name = "MESSAGE_CREATE"


class MessageUpdate(DispatchEvent, DiscordMessage):
    """May be partial: only ``id`` and ``channel_id`` are sure to be present."""

    __slots__ = ()
    type_name = "MESSAGE_UPDATE"


class MessageDelete(DispatchEvent):
    __slots__ = ()
    type_name = "MESSAGE_DELETE"
    id = snowflake()
    channel_id = snowflake()
    guild_id = optional_snowflake()


class InteractionCreate(DispatchEvent):
    __slots__ = ()
    type_name = "INTERACTION_CREATE"
    id = snowflake()
    application_id = snowflake()
    type = integer()
    token = string()
    guild_id = optional_snowflake()
    channel_id = optional_snowflake()
    member = optional_struct(Member)
    user = optional_struct(User)
    data = raw()


class VoiceStateUpdate(DispatchEvent, VoiceState):
    __slots__ = ()
    type_name = "VOICE_STATE_UPDATE"


class VoiceServerUpdate(DispatchEvent):
    """``endpoint`` null means the voice server is gone: wait for the next update."""

    __slots__ = ()
    type_name = "VOICE_SERVER_UPDATE"
    token = string()
    guild_id = snowflake()
    endpoint = optional_string()


class GuildMemberAdd(DispatchEvent, Member):
    __slots__ = ()
    type_name = "GUILD_MEMBER_ADD"


class GuildMemberUpdate(DispatchEvent, Member):
    __slots__ = ()
    type_name = "GUILD_MEMBER_UPDATE"


class GuildMemberRemove(DispatchEvent):
    __slots__ = ()
    type_name = "GUILD_MEMBER_REMOVE"
    guild_id = snowflake()
    user = struct(User)


class GuildMembersChunk(DispatchEvent):
    __slots__ = ()
    type_name = "GUILD_MEMBERS_CHUNK"
    guild_id = snowflake()
    members = struct_list(Member)
    chunk_index = integer()
    chunk_count = integer()
    not_found = snowflake_list()
    presences = struct_list(Presence)
    nonce = optional_string()


class RateLimited(DispatchEvent):
    """The gateway refused a request (op 8 for now) until ``retry_after`` seconds pass."""

    __slots__ = ()
    type_name = "RATE_LIMITED"
    opcode = integer()
    retry_after = raw()
    meta = raw()


class ChannelCreate(DispatchEvent, Channel):
    __slots__ = ()
    type_name = "CHANNEL_CREATE"


class ChannelUpdate(DispatchEvent, Channel):
    __slots__ = ()
    type_name = "CHANNEL_UPDATE"


class ChannelDelete(DispatchEvent, Channel):
    __slots__ = ()
    type_name = "CHANNEL_DELETE"


class PresenceUpdate(DispatchEvent, Presence):
    __slots__ = ()
    type_name = "PRESENCE_UPDATE"


class TypingStart(DispatchEvent):
    __slots__ = ()
    type_name = "TYPING_START"
    channel_id = snowflake()
    guild_id = optional_snowflake()
    user_id = snowflake()
    timestamp = integer()
    member = optional_struct(Member)


class Resharded(Event):
    """shardline's own event, once per reshard, at the switch: from this event on, the
    applications receive the ``new_count`` generation's events (docs/resharding.md); every
    guild's events continue with none missing or repeated."""

    __slots__ = ()
    type_name = "shardline.resharded"
    old_count = integer()
    new_count = integer()
