"""The values a metric label may take where the value comes from outside (bounded sets, so
a broken or hostile gateway cannot grow one time series per name it sends), and the histogram
buckets workers count into for the supervisor to export.

Workers count under these labels and the supervisor exports them (``docs/metrics.md``).
"""

from __future__ import annotations

__all__ = [
    "DISPATCH_TYPES",
    "LATENESS_BUCKETS",
    "OTHER",
    "close_code_label",
    "dispatch_label",
    "lateness_bucket_labels",
]

OTHER = "other"  # any value outside the set

# Upper bounds (seconds) of the voice send-lateness histogram: how far behind its 20 ms
# deadline each frame left. A voice worker reports a count per bucket (the last is +Inf).
LATENESS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.010, 0.020, 0.050)

# Discord's documented gateway dispatch events (docs/topics/gateway-events#receive-events),
# plus RESUMED. A name not here (an undocumented or new event, or garbage) counts as "other".
DISPATCH_TYPES = frozenset(
    """
    READY RESUMED APPLICATION_COMMAND_PERMISSIONS_UPDATE
    AUTO_MODERATION_RULE_CREATE AUTO_MODERATION_RULE_UPDATE AUTO_MODERATION_RULE_DELETE
    AUTO_MODERATION_ACTION_EXECUTION
    CHANNEL_CREATE CHANNEL_UPDATE CHANNEL_DELETE CHANNEL_PINS_UPDATE
    THREAD_CREATE THREAD_UPDATE THREAD_DELETE THREAD_LIST_SYNC THREAD_MEMBER_UPDATE
    THREAD_MEMBERS_UPDATE
    ENTITLEMENT_CREATE ENTITLEMENT_UPDATE ENTITLEMENT_DELETE
    GUILD_CREATE GUILD_UPDATE GUILD_DELETE GUILD_AUDIT_LOG_ENTRY_CREATE
    GUILD_BAN_ADD GUILD_BAN_REMOVE GUILD_EMOJIS_UPDATE GUILD_STICKERS_UPDATE
    GUILD_INTEGRATIONS_UPDATE GUILD_MEMBER_ADD GUILD_MEMBER_REMOVE GUILD_MEMBER_UPDATE
    GUILD_MEMBERS_CHUNK GUILD_ROLE_CREATE GUILD_ROLE_UPDATE GUILD_ROLE_DELETE
    GUILD_SCHEDULED_EVENT_CREATE GUILD_SCHEDULED_EVENT_UPDATE GUILD_SCHEDULED_EVENT_DELETE
    GUILD_SCHEDULED_EVENT_USER_ADD GUILD_SCHEDULED_EVENT_USER_REMOVE
    GUILD_SOUNDBOARD_SOUND_CREATE GUILD_SOUNDBOARD_SOUND_UPDATE GUILD_SOUNDBOARD_SOUND_DELETE
    GUILD_SOUNDBOARD_SOUNDS_UPDATE SOUNDBOARD_SOUNDS
    INTEGRATION_CREATE INTEGRATION_UPDATE INTEGRATION_DELETE
    INTERACTION_CREATE INVITE_CREATE INVITE_DELETE
    MESSAGE_CREATE MESSAGE_UPDATE MESSAGE_DELETE MESSAGE_DELETE_BULK
    MESSAGE_REACTION_ADD MESSAGE_REACTION_REMOVE MESSAGE_REACTION_REMOVE_ALL
    MESSAGE_REACTION_REMOVE_EMOJI MESSAGE_POLL_VOTE_ADD MESSAGE_POLL_VOTE_REMOVE
    PRESENCE_UPDATE RATE_LIMITED
    STAGE_INSTANCE_CREATE STAGE_INSTANCE_UPDATE STAGE_INSTANCE_DELETE
    SUBSCRIPTION_CREATE SUBSCRIPTION_UPDATE SUBSCRIPTION_DELETE
    TYPING_START USER_UPDATE VOICE_CHANNEL_EFFECT_SEND VOICE_STATE_UPDATE VOICE_SERVER_UPDATE
    WEBHOOKS_UPDATE
    """.split()
)


def dispatch_label(event_type: str) -> str:
    """The ``event_type`` label for a dispatch: its name when Discord documents it."""
    return event_type if event_type in DISPATCH_TYPES else OTHER


def close_code_label(code: int | None) -> str:
    """The ``code`` label for a websocket close: the standard 1000-1015 and Discord's
    4000-4022 (gateway and voice) as numbers, "none" when no close frame came, anything else
    "other": at most 40 values."""
    if code is None:
        return "none"
    if 1000 <= code <= 1015 or 4000 <= code <= 4022:
        return str(code)
    return OTHER


def lateness_bucket_labels() -> list[str]:
    """The keys a voice status uses for its lateness buckets, in order ("+Inf" last)."""
    return [repr(bound) for bound in LATENESS_BUCKETS] + ["+Inf"]
