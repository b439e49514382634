"""Gateway intents by name, so configs list names instead of bitmasks."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["INTENTS", "PRIVILEGED", "UnknownIntentError", "intents_from_names", "names_from_bits"]

INTENTS: dict[str, int] = {
    "guilds": 1 << 0,
    "guild_members": 1 << 1,
    "guild_moderation": 1 << 2,
    "guild_expressions": 1 << 3,
    "guild_integrations": 1 << 4,
    "guild_webhooks": 1 << 5,
    "guild_invites": 1 << 6,
    "guild_voice_states": 1 << 7,
    "guild_presences": 1 << 8,
    "guild_messages": 1 << 9,
    "guild_message_reactions": 1 << 10,
    "guild_message_typing": 1 << 11,
    "direct_messages": 1 << 12,
    "direct_message_reactions": 1 << 13,
    "direct_message_typing": 1 << 14,
    "message_content": 1 << 15,
    "guild_scheduled_events": 1 << 16,
    "auto_moderation_configuration": 1 << 20,
    "auto_moderation_execution": 1 << 21,
    "guild_message_polls": 1 << 24,
    "direct_message_polls": 1 << 25,
}

# Privileged intents must be switched on in the developer portal, or the gateway closes 4014.
PRIVILEGED: dict[str, int] = {
    name: INTENTS[name] for name in ("guild_members", "guild_presences", "message_content")
}


class UnknownIntentError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown intent {name!r}; known intents: {', '.join(INTENTS)}")
        self.name = name


def intents_from_names(names: Iterable[str]) -> int:
    """``["guilds", "guild_messages"]`` -> 513. Names are case-insensitive."""
    bits = 0
    for name in names:
        key = name.strip().lower()
        if key not in INTENTS:
            raise UnknownIntentError(name)
        bits |= INTENTS[key]
    return bits


def names_from_bits(bits: int) -> list[str]:
    return [name for name, bit in INTENTS.items() if bits & bit]
