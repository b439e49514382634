"""The message classes everything else derives from, and the one registry that knows them all.

Every concrete message declares what it is with class attributes, the way arikawa's
``Event { Op(); EventType() }`` does: ``type_name`` always, and ``op`` for gateway payloads.
Declaring the class registers it; a user adds a custom event or command by declaring a
subclass, with no string maps and no edits to this package.
"""

from __future__ import annotations

import importlib
from enum import StrEnum
from typing import Any, ClassVar, Literal

import orjson

from ipc.fields import InvalidFieldError, Struct, string

__all__ = [
    "REGISTRY",
    "Accepted",
    "Command",
    "DispatchEvent",
    "ErrorCode",
    "ErrorReply",
    "Event",
    "GatewayCommand",
    "GatewayEvent",
    "Message",
    "Registry",
    "RegistryConflictError",
    "Reply",
    "Routed",
    "UnknownDispatch",
    "UnknownGatewayEvent",
]

Kind = Literal["event", "command"]
BUILTIN_MODULES = (
    "ipc.events",
    "ipc.commands",
    "ipc.errors",
    "ipc.control",
    "ipc.voice",
    "ipc.requests",
)


class RegistryConflictError(TypeError):
    """Two unrelated classes declared the same type name (or gateway op and type)."""


class Registry:
    """Maps declared names to classes: ``type_name`` for events and commands separately, and
    ``(op, t)`` for events received from the gateway."""

    def __init__(self) -> None:
        self._by_name: dict[tuple[Kind, str], type[Message]] = {}
        self._gateway: dict[tuple[int, str | None], type[GatewayEvent]] = {}
        self._builtins_loaded = False

    def _load_builtins(self) -> bool:
        """Declare shardline's own classes on the first miss (they load lazily, so that a
        process that never decodes does not pay for them). True if that was new."""
        if self._builtins_loaded:
            return False
        self._builtins_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        return True

    def register(self, cls: type[Message]) -> None:
        kind: Kind = "command" if issubclass(cls, Command) else "event"
        key = (kind, cls.type_name)
        self._check_conflict(self._by_name.get(key), cls, f"{kind} type_name {cls.type_name!r}")
        self._by_name[key] = cls
        if issubclass(cls, GatewayEvent):
            gkey = cls.gateway_key()
            self._check_conflict(self._gateway.get(gkey), cls, f"gateway (op, t) {gkey!r}")
            self._gateway[gkey] = cls

    @staticmethod
    def _check_conflict(existing: type[Message] | None, cls: type[Message], what: str) -> None:
        # A subclass may take over its parent's name (to add fields); anything else is a clash.
        if existing is not None and not issubclass(cls, existing):
            raise RegistryConflictError(
                f"{what} is already declared by {existing.__module__}.{existing.__qualname__}; "
                f"{cls.__module__}.{cls.__qualname__} must subclass it or pick another name"
            )

    def event(self, type_name: str) -> type[Event] | None:
        cls = self._by_name.get(("event", type_name))
        if cls is None and self._load_builtins():
            return self.event(type_name)
        return cls if cls is None or issubclass(cls, Event) else None

    def command(self, type_name: str) -> type[Command] | None:
        cls = self._by_name.get(("command", type_name))
        if cls is None and self._load_builtins():
            return self.command(type_name)
        return cls if cls is None or issubclass(cls, Command) else None

    def gateway_table(self) -> dict[tuple[int, str | None], type[GatewayEvent]]:
        """The live ``(op, t) -> class`` table (``t`` is None for op != 0), for hot paths."""
        return self._gateway

    def gateway_event(self, op: int, t: str | None) -> type[GatewayEvent] | None:
        cls = self._gateway.get((op, t if op == 0 else None))
        if cls is None and self._load_builtins():
            return self.gateway_event(op, t)
        return cls

    def names(self, kind: Kind) -> list[str]:
        self._load_builtins()
        return sorted(name for (k, name) in self._by_name if k == kind)


REGISTRY = Registry()


class Message(Struct):
    """Anything that crosses a process boundary."""

    __slots__ = ()

    type_name: ClassVar[str]
    op: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type_name" in cls.__dict__:
            REGISTRY.register(cls)


class Event(Message):
    """Something that happened: received from Discord or produced by shardline."""

    __slots__ = ()


class Command(Message):
    """Something a bot asks for: sent to Discord or to shardline. ``reply_class`` is what
    the supervisor (or the application that serves it) answers with when it succeeds; a
    failure is an :class:`ErrorReply`."""

    __slots__ = ()

    reply_class: ClassVar[type[Reply]]

    def validate(self) -> None:
        """Check a command that came from outside before it is acted on (for a gateway
        command, before it goes to Discord, which closes the connection on a payload it
        cannot decode): raises :class:`~ipc.fields.InvalidFieldError` naming the field."""
        self.check_fields(extra_keys=False)
        self.check()

    def check(self) -> None:
        """Rules beyond each field's type (enums, ranges, either-or fields): override to
        add them, raising :class:`~ipc.fields.InvalidFieldError`."""


class GatewayEvent(Event):
    """A payload received from the gateway; ``raw`` is its ``d``."""

    __slots__ = ()

    op: ClassVar[int]

    @classmethod
    def gateway_key(cls) -> tuple[int, str | None]:
        return (cls.op, cls.type_name if cls.op == 0 else None)


class DispatchEvent(GatewayEvent):
    """An op 0 dispatch; ``type_name`` is its ``t``."""

    __slots__ = ()

    op = 0


class UnknownDispatch(DispatchEvent):
    """A dispatch whose ``t`` no class declares: kept whole, never dropped."""

    __slots__ = ("event_type",)

    def __init__(self, event_type: str, data: Any) -> None:
        self.event_type = event_type
        self.raw = data

    def __repr__(self) -> str:
        return f"UnknownDispatch(event_type={self.event_type!r}, raw={self.raw!r})"


class UnknownGatewayEvent(GatewayEvent):
    """A payload with an opcode no class declares."""

    __slots__ = ("unknown_op",)

    def __init__(self, op: int, data: Any) -> None:
        self.unknown_op = op
        self.raw = data

    def __repr__(self) -> str:
        return f"UnknownGatewayEvent(op={self.unknown_op!r}, raw={self.raw!r})"


class Reply(Event):
    """The answer to a command. On the wire a JSON object: ``ok``, ``reply`` (the reply's
    type name) and the reply's own fields."""

    __slots__ = ()

    type_name = "shardline.reply"
    ok: ClassVar[bool] = True

    def encode(self) -> bytes:
        body = self.raw if isinstance(self.raw, dict) else {}
        return orjson.dumps({**body, "ok": self.ok, "reply": self.type_name})

    @staticmethod
    def decode(body: bytes, expected: type[Reply] | None = None) -> Reply:
        """A reply from the wire: the class its ``reply`` names (when this process declared
        it), else ``expected`` for a success, :class:`ErrorReply` for a failure. Raises
        ValueError when the body is not a reply at all."""
        data = orjson.loads(body)
        if not isinstance(data, dict) or type(data.get("ok")) is not bool:
            raise ValueError(f"not a reply: {body[:80]!r}")
        if not data["ok"]:
            return ErrorReply.from_raw(data)
        name = data.get("reply")
        cls = REGISTRY.event(name) if isinstance(name, str) else None
        if cls is None or not issubclass(cls, Reply) or not cls.ok:
            cls = expected if expected is not None and expected.ok else Reply
        return cls.from_raw(data)


class Accepted(Reply):
    """Done, or under way (a stop, a restart): nothing more to say."""

    __slots__ = ()
    type_name = "shardline.reply.accepted"


class Routed(Reply):
    """Handed to the process that acts on it: ``routed`` is ``shard:N`` or ``voice:GUILD``."""

    __slots__ = ()
    type_name = "shardline.reply.routed"
    routed = string()


class ErrorCode(StrEnum):
    UNKNOWN_COMMAND = "unknown_command"  # no class declares the type, or nobody serves it
    MALFORMED = "malformed"  # not a request: frames, JSON, options
    INVALID = "invalid"  # a field does not fit the command's class
    UNROUTABLE = "unroutable"  # no guild or shard, or one this host does not run
    UNAVAILABLE = "unavailable"  # the shard is down, voice is not connected
    TOO_LARGE = "too_large"  # over the gateway's payload limit
    TIMEOUT = "timeout"  # the application serving it did not answer in time
    INTERNAL = "internal"  # a bug: the supervisor's log says more


class ErrorReply(Reply):
    """The command failed: ``error`` says why in words, ``code`` (an :class:`ErrorCode`
    value) in a word a program can branch on."""

    __slots__ = ()
    type_name = "shardline.reply.error"
    ok = False
    error = string()
    code = string()

    @classmethod
    def of(cls, code: ErrorCode, error: str) -> ErrorReply:
        return cls(code=code, error=error)

    @classmethod
    def invalid(cls, command: str, exc: InvalidFieldError) -> ErrorReply:
        return cls(code=ErrorCode.INVALID, error=f"{command}: {exc}")

    @property
    def error_code(self) -> ErrorCode | None:
        try:
            return ErrorCode(self.raw.get("code"))
        except ValueError:
            return None


class GatewayCommand(Command):
    """A payload the shard sends to the gateway: ``{"op": op, "d": raw}``."""

    __slots__ = ()

    op: ClassVar[int]
    # False for what only a shard itself sends (IDENTIFY, RESUME, HEARTBEAT): an application
    # sending one would spend the identify budget or break the session.
    from_applications: ClassVar[bool] = True

    reply_class = Routed

    def to_payload(self) -> dict[str, Any]:
        return {"op": self.op, "d": self.raw}
