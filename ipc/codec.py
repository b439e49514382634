"""Bytes <-> typed messages: gateway payloads, bus messages and commands between processes.

Gateway payloads are decoded with ``orjson`` into dicts and wrapped in lazy typed views (see
``bench/decode.py`` for why). Bus messages are multipart ``[topic, envelope, body]``; the body of
a dispatch is the gateway payload exactly as Discord sent it, never re-encoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import orjson

from ipc.messages import (
    REGISTRY,
    Command,
    Event,
    GatewayCommand,
    GatewayEvent,
    Message,
    UnknownDispatch,
    UnknownGatewayEvent,
)

__all__ = [
    "BATCH",
    "DUPLICATE",
    "MAX_BATCH",
    "MAX_GATEWAY_PAYLOAD",
    "SUBSCRIBE",
    "SUBSCRIBE_BATCHED",
    "CodecError",
    "Envelope",
    "GatewayPayload",
    "UnknownMessageError",
    "batch_count",
    "batch_topics",
    "bus_messages",
    "control_to",
    "decode_bus",
    "decode_command",
    "decode_control",
    "decode_event",
    "decode_gateway",
    "decode_gateway_event",
    "encode_bus_dispatch",
    "encode_bus_event",
    "encode_command",
    "encode_control",
    "encode_gateway_command",
    "event_from_payload",
    "pack_batch",
    "topic_for",
    "topic_prefix",
    "unpack_batch",
]

MAX_GATEWAY_PAYLOAD = 4096  # bytes; the gateway closes 4002 on anything larger


# An application's subscription to the supervisor's event bus, sent (and renewed every few
# seconds) on its events DEALER: [SUBSCRIBE, name, prefix...]; an empty prefix means all.
SUBSCRIBE = b"SUBSCRIBE"
# The same, asking for batches: the bus may then send ``[BATCH, packed]`` (below) as well as
# single three-frame messages.
SUBSCRIBE_BATCHED = b"SUBSCRIBE_BATCHED"
# The first frame of a batch of bus messages, ``[BATCH, packed]``: several three-frame
# messages in one ZeroMQ message, so that a burst costs one send and one receive per batch
# instead of three frames per event in every process. ``packed`` is a little-endian u32
# count N, then 3N u32 lengths (topic, envelope, body of each message, in order), then the
# 3N frames' bytes one after the other (docs/wire.md).
BATCH = b"shardline.batch"
MAX_BATCH = 65536  # messages in one batch, at most
# The topic of ``[DUPLICATE, envelope, b""]``: a dispatch of the session the envelope names was
# not delivered because applications already had it (a reshard's cut-over); a consumer that
# counts the session's seq advances it, and handles nothing.
DUPLICATE = b"shardline.duplicate"


class CodecError(ValueError):
    """Bytes that cannot be decoded into a message; the text says why."""


class UnknownMessageError(CodecError):
    """A type name no class declares (a command from a newer peer, a typo...)."""


@dataclass(frozen=True, slots=True)
class GatewayPayload:
    """The four fields of a gateway payload, before any typing."""

    op: int
    d: Any
    s: int | None
    t: str | None


def decode_gateway(data: bytes | str) -> GatewayPayload:
    """Parse one gateway payload. Raises :class:`CodecError` on bad JSON or a missing ``op``."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"gateway payload is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CodecError(f"gateway payload is a {type(obj).__name__}, not an object")
    op = obj.get("op")
    if type(op) is not int:
        raise CodecError(f"gateway payload has no integer 'op' (got {op!r})")
    s = obj.get("s")
    t = obj.get("t")
    if op == 0 and not isinstance(t, str):
        raise CodecError("dispatch (op 0) without an event type 't'")
    return GatewayPayload(op, obj.get("d"), s if type(s) is int else None, t)


def event_from_payload(op: int, t: str | None, d: Any) -> GatewayEvent:
    """Wrap ``d`` in the class declared for ``(op, t)``; unknown ones keep their raw data."""
    cls = REGISTRY.gateway_event(op, t)
    if cls is not None:
        return cls.from_raw(d)
    if op == 0:
        return UnknownDispatch(t or "", d)
    return UnknownGatewayEvent(op, d)


def decode_gateway_event(data: bytes | str) -> GatewayEvent:
    """Parse and type one gateway payload; the hot path of every consumer, kept lean."""
    try:
        obj = orjson.loads(data)
        op = obj["op"]
        t = obj.get("t")
        cls = _GATEWAY_CLASSES.get((op, t if op == 0 else None))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        decode_gateway(data)  # raises the CodecError that says what is wrong
        raise
    if cls is not None:
        event = _new(cls)
        event.raw = obj.get("d")
        return event
    payload = decode_gateway(data)  # validates what the fast path did not
    return event_from_payload(payload.op, payload.t, payload.d)


_GATEWAY_CLASSES = REGISTRY.gateway_table()
_new = object.__new__


def encode_gateway_command(command: GatewayCommand) -> bytes:
    """The bytes to send on the gateway websocket."""
    return orjson.dumps(command.to_payload())


# -- between processes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """Where a bus message came from. ``(source, session, seq)`` identifies a dispatch, so a
    consumer can drop duplicates and see gaps. ``received_ns`` is ``time.time_ns()`` at receipt,
    a decimal string on the wire (it is above 2**53, which JSON numbers in JavaScript and jq
    cannot hold). ``kind`` is ``"dispatch"`` (body = the gateway payload) or ``"event"``
    (body = event JSON)."""

    source: str
    kind: str = "event"
    session: str | None = None
    seq: int | None = None
    received_ns: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "source": self.source,
                "kind": self.kind,
                "session": self.session,
                "seq": self.seq,
                "received_ns": str(self.received_ns),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        try:
            obj = orjson.loads(data)
            return cls(
                source=str(obj["source"]),
                kind=str(obj.get("kind", "event")),
                session=obj.get("session"),
                seq=obj.get("seq"),
                received_ns=int(obj.get("received_ns", 0)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"bad bus envelope {data[:80]!r}: {exc}") from None


def topic_for(type_name: str, source: str) -> bytes:
    """``MESSAGE_CREATE shard:3``: subscribe to ``b"MESSAGE_CREATE "`` for one type from every
    source, to ``b"GUILD_"`` for a family, to ``b""`` for everything."""
    return f"{type_name} {source}".encode()


def topic_prefix(cls: type[Message]) -> bytes:
    """The subscription prefix for ``cls`` and its subclasses on the bus (e.g. every
    ``shardline.error.*`` for :class:`~ipc.errors.ErrorEvent`)."""
    return cls.type_name.encode()


def encode_bus_dispatch(
    t: str, raw_payload: bytes, source: str, session: str | None, seq: int | None, received_ns: int
) -> list[bytes]:
    """A dispatch for the bus; ``raw_payload`` is the gateway payload as received."""
    envelope = Envelope(source, "dispatch", session, seq, received_ns)
    return [topic_for(t, source), envelope.encode(), raw_payload]


def encode_bus_event(event: Event, source: str, received_ns: int = 0) -> list[bytes]:
    """A shardline event (error, status...) for the bus."""
    envelope = Envelope(source, "event", None, None, received_ns)
    return [topic_for(event.type_name, source), envelope.encode(), orjson.dumps(event.raw)]


def decode_bus(frames: list[bytes]) -> tuple[Envelope, Event]:
    """Decode a ``[topic, envelope, body]`` bus message into its envelope and typed event."""
    if len(frames) != 3:
        raise CodecError(f"bus message has {len(frames)} frames, expected 3")
    topic, envelope_bytes, body = frames
    envelope = Envelope.decode(envelope_bytes)
    if envelope.kind == "dispatch":
        return envelope, decode_gateway_event(body)
    type_name = topic.split(b" ", 1)[0].decode()
    return envelope, decode_event(type_name, body)


_COUNT = struct.Struct("<I")


def pack_batch(frames: list[bytes]) -> bytes:
    """``frames``: the topic, envelope and body of each message in turn -> a batch's
    ``packed`` frame."""
    count = len(frames) // 3
    header = struct.pack(f"<{len(frames) + 1}I", count, *map(len, frames))
    return b"".join((header, *frames))


def _batch_index(packed: bytes) -> tuple[int, tuple[int, ...]]:
    """Where a batch's frames start and their lengths, checked against its size."""
    size = len(packed)
    if size < 4:
        raise CodecError(f"a batch of {size} bytes has no count")
    (count,) = _COUNT.unpack_from(packed)
    start = 4 + 12 * count
    if not 0 < count <= MAX_BATCH or start > size:
        raise CodecError(f"a batch of {size} bytes cannot hold the {count} messages it counts")
    lengths = struct.unpack_from(f"<{3 * count}I", packed, 4)
    if start + sum(lengths) != size:
        raise CodecError(f"a batch's lengths do not add up to its {size} bytes")
    return start, lengths


def batch_count(packed: bytes) -> int:
    """How many messages a batch holds (after checking it)."""
    return len(_batch_index(packed)[1]) // 3


def batch_topics(packed: bytes) -> list[bytes]:
    """The topic of each message of a batch, in order."""
    at, lengths = _batch_index(packed)
    topics = []
    for n in range(0, len(lengths), 3):
        topics.append(packed[at : at + lengths[n]])
        at += lengths[n] + lengths[n + 1] + lengths[n + 2]
    return topics


def unpack_batch(packed: bytes) -> list[list[bytes]]:
    """A batch's messages, each ``[topic, envelope, body]``. Raises CodecError when the
    batch is not one (a count or lengths that do not fit its size)."""
    at, lengths = _batch_index(packed)
    messages = []
    for n in range(0, len(lengths), 3):
        envelope_at = at + lengths[n]
        body_at = envelope_at + lengths[n + 1]
        end = body_at + lengths[n + 2]
        messages.append([packed[at:envelope_at], packed[envelope_at:body_at], packed[body_at:end]])
        at = end
    return messages


def bus_messages(frames: list[bytes]) -> list[list[bytes]]:
    """The ``[topic, envelope, body]`` messages in what came from the bus or a worker: a
    batch's, in order, or the one. Raises CodecError for a broken batch."""
    if frames and frames[0] == BATCH:
        if len(frames) != 2:
            raise CodecError(f"a batch has {len(frames)} frames, not 2")
        return unpack_batch(frames[1])
    return [frames]


def _decode_body(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"message body is not valid JSON: {exc}") from None


def decode_event(type_name: str, body: bytes) -> Event:
    cls = REGISTRY.event(type_name)
    if cls is None:
        raise UnknownMessageError(f"no event class declares type_name {type_name!r}")
    return cls.from_raw(_decode_body(body))


def encode_command(command: Command) -> list[bytes]:
    """``[type_name, body]`` for a command crossing a process boundary (control framing)."""
    return encode_control(command)


def decode_command(frames: list[bytes]) -> Command:
    if len(frames) != 2:
        raise CodecError(f"command has {len(frames)} frames, expected 2")
    type_name = frames[0].decode(errors="replace")
    cls = REGISTRY.command(type_name)
    if cls is None:
        raise UnknownMessageError(f"no command class declares type_name {type_name!r}")
    return cls.from_raw(_decode_body(frames[1]))


def encode_control(message: Message) -> list[bytes]:
    """A control message, worker <-> supervisor: ``[type_name, body]`` (docs/wire.md)."""
    return [message.type_name.encode(), orjson.dumps(message.raw)]


def control_to(identity: str, message: Message) -> list[bytes]:
    """A control message as the supervisor's ROUTER sends it to one worker."""
    return [identity.encode(), *encode_control(message)]


def decode_control(frames: list[bytes]) -> Message:
    """A control message from the other side: a worker's event, or the supervisor's
    command. Raises CodecError (UnknownMessageError for a type nobody declares)."""
    if len(frames) != 2:
        raise CodecError(f"control message has {len(frames)} frames, expected 2")
    type_name = frames[0].decode(errors="replace")
    cls: type[Message] | None = REGISTRY.event(type_name) or REGISTRY.command(type_name)
    if cls is None:
        raise UnknownMessageError(f"no class declares type_name {type_name[:64]!r}")
    return cls.from_raw(_decode_body(frames[1]))


def message_class(message: Message) -> str:
    """A short description of a message for logs: its class and type name."""
    return f"{type(message).__name__}({message.type_name})"
