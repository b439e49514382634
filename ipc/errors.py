"""Errors are events: they travel the same channels, and a handler for :class:`ErrorEvent`
catches every one of them."""

from __future__ import annotations

from ipc.fields import boolean, integer, optional_string, raw, string
from ipc.messages import Event

__all__ = [
    "CommandFailed",
    "ConnectionLost",
    "DecodeError",
    "ErrorEvent",
    "EventsDropped",
    "FatalClose",
    "InvalidSession",
    "PayloadTooLarge",
    "ProtocolError",
]


class ErrorEvent(Event):
    """Base of every error event; ``message`` says what happened and what to do."""

    __slots__ = ()
    type_name = "shardline.error"
    message = string()
    source = optional_string()  # "shard:3", "voice:1234", "supervisor"


class DecodeError(ErrorEvent):
    """Bytes from a peer could not be decoded (bad JSON, broken compression stream...)."""

    __slots__ = ()
    type_name = "shardline.error.decode"
    sample = optional_string()  # the first bytes of what failed, for the log


class ProtocolError(ErrorEvent):
    """A peer broke the protocol (unknown opcode, dispatch without ``t``...)."""

    __slots__ = ()
    type_name = "shardline.error.protocol"


class FatalClose(ErrorEvent):
    """The gateway closed with a code that retrying cannot fix; ``advice`` says what will."""

    __slots__ = ()
    type_name = "shardline.error.fatal_close"
    code = integer()
    reason = optional_string()
    advice = string()


class ConnectionLost(ErrorEvent):
    """A connection dropped; the loop reconnects by itself."""

    __slots__ = ()
    type_name = "shardline.error.connection_lost"
    code = integer(default=0)


class InvalidSession(ConnectionLost):
    """The gateway sent INVALID_SESSION (op 9): resume when ``resumable``, else identify
    afresh after a delay that doubles with each one ``in_a_row``."""

    __slots__ = ()
    type_name = "shardline.error.invalid_session"
    resumable = boolean(default=False)
    in_a_row = integer(default=1)


class PayloadTooLarge(ErrorEvent):
    """An outgoing payload exceeded the gateway's 4096-byte limit and was not sent."""

    __slots__ = ()
    type_name = "shardline.error.payload_too_large"
    size = integer()
    command = string()


class CommandFailed(ErrorEvent):
    """A command could not be delivered; ``command`` names it, ``detail`` carries its body."""

    __slots__ = ()
    type_name = "shardline.error.command_failed"
    command = string()
    detail = raw()


class EventsDropped(ErrorEvent):
    """Sent by the bus to one subscriber, whatever its subscription, just before the first
    event it gets after a loss: ``dropped`` events for it were dropped because its buffer
    (``bus.subscriber_buffer_bytes``) was full. A subscriber that filters topics cannot see
    loss in ``seq``; this tells it exactly."""

    __slots__ = ()
    type_name = "shardline.error.events_dropped"
    dropped = integer()
