"""Typed, lazy views over Discord's JSON objects.

A :class:`Struct` wraps the dict that ``orjson.loads`` produced and converts a field only when
it is read (snowflake strings become ints, nested objects become views). Decoding therefore
costs little more than parsing, and nothing Discord sent is ever dropped: ``struct.raw`` keeps
every key, known or not. Building a struct from keyword arguments encodes each value into
Discord's wire shape (ints back to snowflake strings), so a struct round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, Self, TypeVar, overload

__all__ = [
    "Field",
    "MissingFieldError",
    "Struct",
    "boolean",
    "integer",
    "number",
    "optional_snowflake",
    "optional_string",
    "optional_struct",
    "raw",
    "snowflake",
    "snowflake_list",
    "string",
    "struct",
    "struct_list",
]

T = TypeVar("T")
S = TypeVar("S", bound="Struct")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class MissingFieldError(KeyError):
    """A required field is absent from the payload Discord (or a peer) sent."""

    def __init__(self, owner: str, key: str) -> None:
        super().__init__(f"{owner}: required field {key!r} is missing from the payload")
        self.owner = owner
        self.key = key


def _identity(value: Any) -> Any:
    return value


class Field(Generic[T]):
    """A descriptor that reads one key of ``obj.raw`` and converts it on access."""

    __slots__ = ("_decode", "_default", "_encode", "key", "name")

    def __init__(
        self,
        decode: Callable[[Any], T] = _identity,
        encode: Callable[[Any], Any] = _identity,
        *,
        key: str | None = None,
        default: Any = MISSING,
    ) -> None:
        self._decode = decode
        self._encode = encode
        self._default = default
        self.key = key or ""
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        if not self.key:
            self.key = name

    @overload
    def __get__(self, obj: None, owner: type) -> Field[T]: ...

    @overload
    def __get__(self, obj: Struct, owner: type) -> T: ...

    def __get__(self, obj: Struct | None, owner: type) -> Field[T] | T:
        if obj is None:
            return self
        try:
            value = obj.raw[self.key]
        except KeyError:
            if self._default is MISSING:
                raise MissingFieldError(type(obj).__name__, self.key) from None
            default = self._default
            # A fresh list each time: a caller appending to it must not change the default.
            fresh: T = [] if default == [] else default
            return fresh
        return self._decode(value)

    def __set__(self, obj: Struct, value: T) -> None:
        raise AttributeError(
            f"{type(obj).__name__}.{self.name} is read-only: build a new instance instead"
        )

    def encode(self, value: Any) -> Any:
        """Turn a Python value into its wire form (ints into snowflake strings...)."""
        return self._encode(value)


class Struct:
    """Base of every typed view: a dict in Discord's wire shape plus typed accessors."""

    __slots__ = ("raw",)

    _fields: ClassVar[dict[str, Field[Any]]] = {}
    raw: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: dict[str, Field[Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Field):
                    fields[name] = value
        cls._fields = fields

    def __init__(self, **values: Any) -> None:
        raw: dict[str, Any] = {}
        for name, value in values.items():
            field = self._fields.get(name)
            if field is None:
                raise TypeError(f"{type(self).__name__} has no field {name!r}")
            raw[field.key] = value if value is None else field.encode(value)
        self.raw = raw

    @classmethod
    def from_raw(cls, raw: Any) -> Self:
        """Wrap an already-decoded wire object without copying it."""
        obj = cls.__new__(cls)
        obj.raw = raw
        return obj

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(self.raw == other.raw)

    def __hash__(self) -> int:
        return hash((type(self), repr(self.raw)))

    def __repr__(self) -> str:
        shown = []
        for name, field in self._fields.items():
            if isinstance(self.raw, dict) and field.key in self.raw:
                shown.append(f"{name}={getattr(self, name)!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


def _snowflake_in(value: Any) -> int:
    return int(value)


def _snowflake_out(value: Any) -> str:
    return str(int(value))


def _nullable(decode: Callable[[Any], T]) -> Callable[[Any], T | None]:
    def convert(value: Any) -> T | None:
        return None if value is None else decode(value)

    return convert


def snowflake(*, key: str | None = None) -> Field[int]:
    """A required snowflake: a string on the wire, an int in Python."""
    return Field(_snowflake_in, _snowflake_out, key=key)


def optional_snowflake(*, key: str | None = None) -> Field[int | None]:
    """A snowflake that may be absent or null."""
    return Field(_nullable(_snowflake_in), _snowflake_out, key=key, default=None)


def snowflake_list(*, key: str | None = None) -> Field[list[int]]:
    """A list of snowflakes (absent means empty)."""
    return Field(
        lambda values: [int(v) for v in values],
        lambda values: [str(int(v)) for v in values],
        key=key,
        default=[],
    )


def string(*, key: str | None = None) -> Field[str]:
    return Field(str, str, key=key)


def optional_string(*, key: str | None = None) -> Field[str | None]:
    return Field(_nullable(str), str, key=key, default=None)


def integer(*, key: str | None = None, default: Any = MISSING) -> Field[int]:
    return Field(int, int, key=key, default=default)


def number(*, key: str | None = None, default: Any = MISSING) -> Field[float]:
    return Field(float, float, key=key, default=default)


def boolean(*, key: str | None = None, default: Any = MISSING) -> Field[bool]:
    return Field(bool, bool, key=key, default=default)


def raw(*, key: str | None = None, default: Any = None) -> Field[Any]:
    """A field passed through untouched (objects we do not model yet)."""
    return Field(key=key, default=default)


def _struct_out(value: Any) -> Any:
    return value.raw if isinstance(value, Struct) else value


def struct(cls: type[S], *, key: str | None = None) -> Field[S]:
    """A required nested object, viewed as ``cls``."""
    return Field(cls.from_raw, _struct_out, key=key)


def optional_struct(cls: type[S], *, key: str | None = None) -> Field[S | None]:
    """A nested object that may be absent or null."""
    return Field(_nullable(cls.from_raw), _struct_out, key=key, default=None)


def struct_list(cls: type[S], *, key: str | None = None) -> Field[list[S]]:
    """A list of nested objects (absent means empty)."""
    make = cls.from_raw
    return Field(
        lambda values: [make(v) for v in values],
        lambda values: [_struct_out(v) for v in values],
        key=key,
        default=[],
    )
