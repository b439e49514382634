"""Typed, lazy views over Discord's JSON objects.

A :class:`Struct` wraps the dict that ``orjson.loads`` produced and converts a field only when
it is read (snowflake strings become ints, nested objects become views). Decoding therefore
costs little more than parsing, and nothing Discord sent is ever dropped: ``struct.raw`` keeps
every key, known or not. Building a struct from keyword arguments encodes each value into
Discord's wire shape (ints back to snowflake strings), so a struct round-trips exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Self, TypeVar, overload

__all__ = [
    "Field",
    "InvalidFieldError",
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


class InvalidFieldError(ValueError):
    """A field of a message from outside does not fit its declared type; ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r} {problem}")
        self.field = field
        self.problem = problem


# What one field's wire value must look like: None when it fits, else what is wrong.
Check = Callable[[Any], "str | None"]

MAX_STRING = 4096  # no gateway payload is longer than this, so no string in it is either
MAX_LIST = 1000
SNOWFLAKE_MAX = 2**64 - 1


def _identity(value: Any) -> Any:
    return value


def _sample(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class Field(Generic[T]):
    """A descriptor that reads one key of ``obj.raw`` and converts it on access."""

    __slots__ = ("_decode", "_default", "_encode", "check", "key", "name")

    def __init__(
        self,
        decode: Callable[[Any], T] = _identity,
        encode: Callable[[Any], Any] = _identity,
        *,
        key: str | None = None,
        default: Any = MISSING,
        check: Check | None = None,
    ) -> None:
        self._decode = decode
        self._encode = encode
        self._default = default
        self.check = check
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
            fresh: T = [] if default == [] else {} if default == {} else default
            return fresh
        return self._decode(value)

    def __set__(self, obj: Struct, value: T) -> None:
        raise AttributeError(
            f"{type(obj).__name__}.{self.name} is read-only: build a new instance instead"
        )

    def encode(self, value: Any) -> Any:
        """Turn a Python value into its wire form (ints into snowflake strings...)."""
        return self._encode(value)

    @property
    def required(self) -> bool:
        return self._default is MISSING

    @property
    def nullable(self) -> bool:
        """Whether null is a valid wire value (the field's default is None)."""
        return self._default is None


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

    def check_fields(self, *, extra_keys: bool = True) -> None:
        """Check ``raw`` against the declared fields, as outside input must be before it is
        used: raises :class:`InvalidFieldError` naming the first field that does not fit
        (missing, wrong type, out of range; unknown keys too when ``extra_keys`` is False)."""
        raw = self.raw
        if not isinstance(raw, dict):
            raise InvalidFieldError("<body>", f"must be a JSON object, not {_sample(raw)}")
        known = set()
        for field in self._fields.values():
            known.add(field.key)
            if field.key not in raw:
                if field.required:
                    raise InvalidFieldError(field.key, "is required")
                continue
            value = raw[field.key]
            if field.check is not None and not (value is None and field.nullable):
                problem = field.check(value)
                if problem is not None:
                    raise InvalidFieldError(field.key, problem)
        if not extra_keys:
            unknown = sorted(str(k) for k in raw if k not in known)
            if unknown:
                raise InvalidFieldError(unknown[0][:64], "is not a field of this message")

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


def check_snowflake(value: Any) -> str | None:
    """A snowflake on the wire: a decimal string (or an int) from 1 to 2**64 - 1."""
    if type(value) is int:
        number = value
    elif isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        number = int(value)
    else:
        return f"must be a snowflake (a decimal id), not {_sample(value)}"
    if not 0 < number <= SNOWFLAKE_MAX:
        return f"must be a snowflake from 1 to 2**64 - 1, not {number}"
    return None


def _check_snowflake_list(value: Any) -> str | None:
    if not isinstance(value, list) or len(value) > MAX_LIST:
        return f"must be a list of at most {MAX_LIST} snowflakes"
    for item in value:
        if check_snowflake(item) is not None:
            return f"has an item that is not a snowflake: {_sample(item)}"
    return None


def _check_string(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_sample(value)}"
    if len(value) > MAX_STRING:
        return f"is longer than {MAX_STRING} characters"
    return None


def _check_integer(value: Any) -> str | None:
    if type(value) is not int or not -(2**53) <= value <= 2**53:
        return f"must be an integer, not {_sample(value)}"
    return None


def _check_number(value: Any) -> str | None:
    if type(value) not in (int, float) or value != value or value in (math.inf, -math.inf):
        return f"must be a finite number, not {_sample(value)}"
    return None


def _check_boolean(value: Any) -> str | None:
    if type(value) is not bool:
        return f"must be true or false, not {_sample(value)}"
    return None


def _check_object(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"must be an object, not {_sample(value)}"
    return None


def _snowflake_out(value: Any) -> str:
    return str(int(value))


def _nullable(decode: Callable[[Any], T]) -> Callable[[Any], T | None]:
    def convert(value: Any) -> T | None:
        return None if value is None else decode(value)

    return convert


def snowflake(*, key: str | None = None) -> Field[int]:
    """A required snowflake: a string on the wire, an int in Python."""
    return Field(_snowflake_in, _snowflake_out, key=key, check=check_snowflake)


def optional_snowflake(*, key: str | None = None) -> Field[int | None]:
    """A snowflake that may be absent or null."""
    return Field(
        _nullable(_snowflake_in), _snowflake_out, key=key, default=None, check=check_snowflake
    )


def snowflake_list(*, key: str | None = None) -> Field[list[int]]:
    """A list of snowflakes (absent means empty)."""
    return Field(
        lambda values: [int(v) for v in values],
        lambda values: [str(int(v)) for v in values],
        key=key,
        default=[],
        check=_check_snowflake_list,
    )


def string(*, key: str | None = None) -> Field[str]:
    return Field(str, str, key=key, check=_check_string)


def optional_string(*, key: str | None = None) -> Field[str | None]:
    return Field(_nullable(str), str, key=key, default=None, check=_check_string)


def integer(*, key: str | None = None, default: Any = MISSING) -> Field[int]:
    return Field(int, int, key=key, default=default, check=_check_integer)


def number(*, key: str | None = None, default: Any = MISSING) -> Field[float]:
    return Field(float, float, key=key, default=default, check=_check_number)


def boolean(*, key: str | None = None, default: Any = MISSING) -> Field[bool]:
    return Field(bool, bool, key=key, default=default, check=_check_boolean)


MAX_COUNT_KEYS = 256


def _counts_in(value: Any) -> dict[str, int]:
    """Only string keys (up to 64 characters) with counts from 0 to 2**53, at most
    MAX_COUNT_KEYS of them: anything else is left out, so a reader never sees it."""
    if not isinstance(value, dict):
        return {}
    counts: dict[str, int] = {}
    for key, count in value.items():
        if len(counts) >= MAX_COUNT_KEYS:
            break
        if isinstance(key, str) and len(key) <= 64 and type(count) is int and 0 <= count <= 2**53:
            counts[key] = count
    return counts


def _check_counts(value: Any) -> str | None:
    if _counts_in(value) != value:
        return f"must map up to {MAX_COUNT_KEYS} names to counts, not {_sample(value)}"
    return None


def counts(*, key: str | None = None) -> Field[dict[str, int]]:
    """Counts by name (a label value); absent means none."""
    return Field(_counts_in, dict, key=key, default={}, check=_check_counts)


def raw(*, key: str | None = None, default: Any = None) -> Field[Any]:
    """A field passed through untouched (objects we do not model yet)."""
    return Field(key=key, default=default)


def _struct_out(value: Any) -> Any:
    return value.raw if isinstance(value, Struct) else value


def struct(cls: type[S], *, key: str | None = None) -> Field[S]:
    """A required nested object, viewed as ``cls``."""
    return Field(cls.from_raw, _struct_out, key=key, check=_check_object)


def optional_struct(cls: type[S], *, key: str | None = None) -> Field[S | None]:
    """A nested object that may be absent or null."""
    return Field(_nullable(cls.from_raw), _struct_out, key=key, default=None, check=_check_object)


def struct_list(cls: type[S], *, key: str | None = None) -> Field[list[S]]:
    """A list of nested objects (absent means empty)."""
    make = cls.from_raw
    return Field(
        lambda values: [make(v) for v in values],
        lambda values: [_struct_out(v) for v in values],
        key=key,
        default=[],
    )
