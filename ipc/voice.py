"""What voice processes publish on the event bus: track start and end, periodic stats,
errors, and (when ``voice.receive`` is on) each member's Opus frames.

Subscribe like any event: ``@client.on(TrackEnd)``. The topic is the type name, so
``client.events(VoiceAudio)`` receives audio only where it is asked for.
"""

from __future__ import annotations

import base64

from ipc.errors import ErrorEvent
from ipc.fields import boolean, integer, optional_string, raw, snowflake, string
from ipc.messages import Event

__all__ = ["TrackEnd", "TrackStart", "VoiceAudio", "VoiceFailure", "VoiceStats"]


class TrackStart(Event):
    """A track began playing (SPEAKING went out, the first frame follows)."""

    __slots__ = ()
    type_name = "shardline.voice.track_start"
    guild_id = snowflake()
    path = string()


class TrackEnd(Event):
    """A track stopped playing. ``reason``: ``finished`` (the source ended), ``stopped``
    (a stop, a play that replaced it, or the session ending), or ``error`` (``error`` says
    why)."""

    __slots__ = ()
    type_name = "shardline.voice.track_end"
    guild_id = snowflake()
    path = string()
    reason = string()
    frames = integer(default=0)
    error = optional_string()


class VoiceStats(Event):
    """Every few seconds while connected: the send clock and the connection."""

    __slots__ = ()
    type_name = "shardline.voice.stats"
    guild_id = snowflake()
    state = string()
    ping_ms = raw()
    packets = integer(default=0)
    late = integer(default=0)
    jitter_p99_ms = raw()
    dave_protocol_version = integer(default=0)
    e2ee = boolean(default=False)  # frames are end-to-end encrypted now


class VoiceAudio(Event):
    """One Opus frame (20 ms) a member sent, decrypted (transport and DAVE)."""

    __slots__ = ()
    type_name = "shardline.voice.audio"
    guild_id = snowflake()
    user_id = snowflake()
    opus_base64 = string(key="opus")

    @property
    def opus(self) -> bytes:
        return base64.b64decode(self.opus_base64)

    @classmethod
    def of(cls, guild_id: int, user_id: int, opus: bytes) -> VoiceAudio:
        return cls(guild_id=guild_id, user_id=user_id, opus_base64=base64.b64encode(opus).decode())


class VoiceFailure(ErrorEvent):
    """A voice session could not do something (a file would not play, the connection
    ended); ``message`` says what and why."""

    __slots__ = ()
    type_name = "shardline.error.voice"
    guild_id = snowflake()
