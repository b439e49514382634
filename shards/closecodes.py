"""What to do after the gateway closes: one row per close code (a test per row).

Source: discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-close-event-codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["CLOSE_CODES", "CloseAction", "ClosePolicy", "policy_for"]


class CloseAction(Enum):
    RESUME = "resume"  # reconnect to resume_gateway_url and RESUME
    IDENTIFY = "identify"  # the session is gone: reconnect and IDENTIFY afresh
    FATAL = "fatal"  # retrying cannot help: stop and tell the operator what to do


@dataclass(frozen=True)
class ClosePolicy:
    code: int
    action: CloseAction
    meaning: str
    advice: str = ""


_R, _I, _F = CloseAction.RESUME, CloseAction.IDENTIFY, CloseAction.FATAL

CLOSE_CODES: dict[int, ClosePolicy] = {
    p.code: p
    for p in (
        ClosePolicy(4000, _R, "unknown error"),
        ClosePolicy(4001, _R, "unknown opcode sent"),
        ClosePolicy(4002, _R, "decode error (invalid or oversized payload sent)"),
        ClosePolicy(4003, _I, "not authenticated / session invalidated"),
        ClosePolicy(
            4004,
            _F,
            "authentication failed",
            "Discord rejected the token: check DISCORD_TOKEN (it may have been reset, e.g. "
            "after the daily identify limit ran out) and restart.",
        ),
        ClosePolicy(4005, _R, "already authenticated"),
        ClosePolicy(4007, _I, "invalid seq on resume"),
        ClosePolicy(4008, _R, "rate limited (sent too fast)"),
        ClosePolicy(4009, _I, "session timed out"),
        ClosePolicy(
            4010,
            _F,
            "invalid shard",
            "The shard id/count pair is invalid: the id must be below the count; check "
            "shards.count and shards.ids.",
        ),
        ClosePolicy(
            4011,
            _F,
            "sharding required",
            "The bot is in too many guilds for this shard count: the bot needs more shards. "
            'Set shards.count to "auto" or to a larger number and restart.',
        ),
        ClosePolicy(
            4012,
            _F,
            "invalid API version",
            "This gateway does not accept API v10: check discord.gateway_url.",
        ),
        ClosePolicy(
            4013,
            _F,
            "invalid intents",
            "The intents bitmask is invalid: check shards.intents for unknown names.",
        ),
        ClosePolicy(
            4014,
            _F,
            "disallowed intents",
            "A privileged intent is not enabled for this bot: enable {privileged} in the "
            "Discord developer portal (Bot > Privileged Gateway Intents), or remove it from "
            "shards.intents.",
        ),
    )
}


def policy_for(code: int | None) -> ClosePolicy:
    """The policy for a close code; unknown codes, 1xxx codes and no code at all resume."""
    if code is not None and code in CLOSE_CODES:
        return CLOSE_CODES[code]
    return ClosePolicy(code or 0, CloseAction.RESUME, "connection lost")
