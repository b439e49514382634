"""Everything that crosses a process boundary in shardline: typed events and commands, their
registry and codec. Imports none of shardline's other packages."""

from ipc import commands, errors, events, objects
from ipc.codec import (
    CodecError,
    Envelope,
    decode_bus,
    decode_command,
    decode_event,
    decode_gateway,
    decode_gateway_event,
    encode_command,
    encode_gateway_command,
    event_from_payload,
)
from ipc.handlers import HandlerTable
from ipc.messages import (
    REGISTRY,
    Command,
    DispatchEvent,
    Event,
    GatewayCommand,
    GatewayEvent,
    Message,
    UnknownDispatch,
    UnknownGatewayEvent,
)

__all__ = [
    "REGISTRY",
    "CodecError",
    "Command",
    "DispatchEvent",
    "Envelope",
    "Event",
    "GatewayCommand",
    "GatewayEvent",
    "HandlerTable",
    "Message",
    "UnknownDispatch",
    "UnknownGatewayEvent",
    "commands",
    "decode_bus",
    "decode_command",
    "decode_event",
    "decode_gateway",
    "decode_gateway_event",
    "encode_command",
    "encode_gateway_command",
    "errors",
    "event_from_payload",
    "events",
    "objects",
]
