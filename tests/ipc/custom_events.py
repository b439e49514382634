"""A user's own messages, declared outside the ipc package: declaring them registers them."""

from __future__ import annotations

from ipc.events import MessageCreate
from ipc.fields import integer, snowflake, string
from ipc.messages import Command, DispatchEvent, Event


class AutoModerationActionExecution(DispatchEvent):
    """A dispatch shardline does not ship a class for."""

    __slots__ = ()
    type_name = "AUTO_MODERATION_ACTION_EXECUTION"
    guild_id = snowflake()
    rule_id = snowflake()
    matched_keyword = string()


class LevelUp(Event):
    """An application-level event one bot process publishes for another."""

    __slots__ = ()
    type_name = "mybot.level_up"
    user_id = snowflake()
    level = integer()


class Ban(Command):
    __slots__ = ()
    type_name = "mybot.ban"
    guild_id = snowflake()
    user_id = snowflake()
    reason = string()


class RichMessageCreate(MessageCreate):
    """Takes over MESSAGE_CREATE to add a field: allowed, because it subclasses the owner."""

    __slots__ = ()
    type_name = "MESSAGE_CREATE"
    nonce = string()
