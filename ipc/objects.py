"""Typed views of Discord's resource objects (users, members, guilds, channels, messages...).

Only the commonly used fields are declared; every other key stays readable in ``.raw``.
"""

from __future__ import annotations

from ipc.fields import (
    Struct,
    boolean,
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

__all__ = [
    "Activity",
    "Attachment",
    "Channel",
    "DiscordMessage",
    "Embed",
    "Emoji",
    "Guild",
    "Member",
    "PartialGuild",
    "Presence",
    "Role",
    "User",
    "VoiceState",
]


class User(Struct):
    __slots__ = ()
    id = snowflake()
    username = string()
    discriminator = string()
    global_name = optional_string()
    avatar = optional_string()
    bot = boolean(default=False)


class Member(Struct):
    __slots__ = ()
    user = optional_struct(User)
    nick = optional_string()
    roles = snowflake_list()
    joined_at = optional_string()
    deaf = boolean(default=False)
    mute = boolean(default=False)
    guild_id = optional_snowflake()  # present in GUILD_MEMBER_* dispatches


class Role(Struct):
    __slots__ = ()
    id = snowflake()
    name = string()
    color = integer(default=0)
    position = integer(default=0)
    permissions = string()
    managed = boolean(default=False)


class Emoji(Struct):
    __slots__ = ()
    id = optional_snowflake()
    name = optional_string()


class Channel(Struct):
    __slots__ = ()
    id = snowflake()
    type = integer()
    guild_id = optional_snowflake()
    name = optional_string()
    position = integer(default=0)
    parent_id = optional_snowflake()
    topic = optional_string()


class Activity(Struct):
    __slots__ = ()
    name = string()
    type = integer()
    state = optional_string()
    url = optional_string()


class Presence(Struct):
    __slots__ = ()
    user = struct(User)  # partial: only ``id`` is guaranteed
    guild_id = optional_snowflake()
    status = string()
    activities = struct_list(Activity)


class VoiceState(Struct):
    __slots__ = ()
    guild_id = optional_snowflake()
    channel_id = optional_snowflake()
    user_id = snowflake()
    member = optional_struct(Member)
    session_id = string()
    self_mute = boolean(default=False)
    self_deaf = boolean(default=False)


class PartialGuild(Struct):
    """An unavailable guild, as listed in READY."""

    __slots__ = ()
    id = snowflake()
    unavailable = boolean(default=False)


class Guild(Struct):
    __slots__ = ()
    id = snowflake()
    name = string()
    owner_id = snowflake()
    icon = optional_string()
    unavailable = boolean(default=False)
    large = boolean(default=False)
    member_count = integer(default=0)
    roles = struct_list(Role)
    emojis = struct_list(Emoji)
    channels = struct_list(Channel)
    threads = struct_list(Channel)
    members = struct_list(Member)
    voice_states = struct_list(VoiceState)
    presences = struct_list(Presence)
    joined_at = optional_string()
    features = raw(default=[])


class Attachment(Struct):
    __slots__ = ()
    id = snowflake()
    filename = string()
    size = integer()
    url = string()


class Embed(Struct):
    __slots__ = ()
    title = optional_string()
    description = optional_string()
    url = optional_string()


class DiscordMessage(Struct):
    __slots__ = ()
    id = snowflake()
    channel_id = snowflake()
    guild_id = optional_snowflake()
    author = struct(User)
    member = optional_struct(Member)
    content = string()
    timestamp = string()
    edited_timestamp = optional_string()
    tts = boolean(default=False)
    mention_everyone = boolean(default=False)
    mentions = struct_list(User)
    mention_roles = snowflake_list()
    attachments = struct_list(Attachment)
    embeds = struct_list(Embed)
    pinned = boolean(default=False)
    type = integer(default=0)
    webhook_id = optional_snowflake()
