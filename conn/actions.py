"""Actions both connection state machines (the shard's and the voice gateway's) return to
their loop, so the two vocabularies do not each spell the same thing."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Close"]


@dataclass(slots=True)
class Close:
    """Close the websocket with ``code`` (a resumable one keeps the session); the loop then
    reports the close back to the state machine."""

    code: int
    reason: str
