"""Everything that crosses a process boundary in shardline: typed events and commands, their
registry and codec. Imports none of shardline's other packages.

Submodules load on first use (``ipc.events``, ``ipc.codec``...), so a shard process that only
moves bytes does not pay for every event class.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "control",
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

_HOMES = {
    "REGISTRY": "ipc.messages",
    "Command": "ipc.messages",
    "DispatchEvent": "ipc.messages",
    "Event": "ipc.messages",
    "GatewayCommand": "ipc.messages",
    "GatewayEvent": "ipc.messages",
    "Message": "ipc.messages",
    "UnknownDispatch": "ipc.messages",
    "UnknownGatewayEvent": "ipc.messages",
    "CodecError": "ipc.codec",
    "Envelope": "ipc.codec",
    "decode_bus": "ipc.codec",
    "decode_command": "ipc.codec",
    "decode_event": "ipc.codec",
    "decode_gateway": "ipc.codec",
    "decode_gateway_event": "ipc.codec",
    "encode_command": "ipc.codec",
    "encode_gateway_command": "ipc.codec",
    "event_from_payload": "ipc.codec",
    "HandlerTable": "ipc.handlers",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    if name in ("commands", "control", "errors", "events", "objects"):
        return importlib.import_module(f"ipc.{name}")
    raise AttributeError(f"module 'ipc' has no attribute {name!r}")
