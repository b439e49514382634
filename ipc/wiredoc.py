"""The wire's reference tables, generated from the classes that define it, so that
``docs/wire.md`` cannot drift from the code (a test regenerates them and compares):
``python -m ipc.wiredoc`` prints them."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from collections.abc import Iterable
from enum import Enum
from typing import Any

from ipc import control, errors, requests, voice
from ipc.checkpoint import Checkpoint
from ipc.fields import MISSING, Field, check_snowflake
from ipc.messages import Accepted, Command, ErrorCode, ErrorReply, Message, Reply, Routed
from ipc.states import ShardState, VoiceState
from ipc.status import FleetStatus

__all__ = ["SECTIONS", "render"]

_CHECKS = {
    "_check_string": "string",
    "_check_integer": "integer",
    "_check_number": "number",
    "_check_boolean": "boolean",
    "_check_object": "object",
    "_check_snowflake_list": "list of snowflakes (strings)",
    "_check_counts": "object of names to counts (at most 256)",
}


def _kind(field: Field[Any]) -> str:
    check = field.check
    if check is None:
        return "any JSON"
    if check is check_snowflake:
        return "snowflake (string, or integer)"
    return _CHECKS.get(getattr(check, "__name__", ""), "checked value")


def _fields(cls: type[Message]) -> str:
    out = []
    for field in cls._fields.values():
        default = field._default
        if default is MISSING:
            note = "required"
        elif default is None:
            note = "optional, may be null"
        else:
            note = f"default `{_json(default)}`"
        out.append(f"`{field.key}` ({_kind(field)}, {note})")
    return "; ".join(out) or "none"


def _json(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return repr(value).replace("'", '"')


def _line(doc: str | None) -> str:
    """A docstring's first paragraph, on one line, in Markdown."""
    text = inspect.cleandoc(doc or "")
    first = " ".join(text.split("\n\n")[0].split()) if text else ""
    first = re.sub(r":(?:class|func|meth):`~?([^`]+)`", r"`\1`", first)
    return first.replace("``", "`").replace("|", "/")


def _declared(module: Any, base: type[Message]) -> list[type[Message]]:
    return [
        cls
        for cls in vars(module).values()
        if isinstance(cls, type)
        and issubclass(cls, base)
        and cls.__module__ == module.__name__
        and "type_name" in cls.__dict__
    ]


def _table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = list(head)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def commands() -> str:
    rows = []
    for cls in _declared(requests, requests.Request):
        assert issubclass(cls, Command)
        rows.append(
            [
                f"`{cls.type_name}`",
                _fields(cls),
                f"`{cls.reply_class.type_name}`",
                _line(cls.__doc__),
            ]
        )
    return _table(["type", "body fields", "reply on success", "what it does"], rows)


def replies() -> str:
    classes: list[type[Message]] = [Reply, Accepted, Routed, ErrorReply]
    classes += _declared(requests, Reply)
    rows = [[f"`{c.type_name}`", _fields(c), _line(c.__doc__)] for c in classes]
    return _table(["reply", "fields (beside `ok` and `reply`)", "meaning"], rows)


def error_codes() -> str:
    source = inspect.getsource(ErrorCode)
    rows = []
    for code in ErrorCode:
        comment = ""
        for line in source.splitlines():
            if f'"{code.value}"' in line and "#" in line:
                comment = line.split("#", 1)[1].strip()
        rows.append([f"`{code.value}`", comment])
    return _table(["code", "when"], rows)


def control_messages() -> str:
    rows = []
    for cls in _declared(control, Message):
        direction = "supervisor -> worker" if issubclass(cls, Command) else "worker -> supervisor"
        rows.append([direction, f"`{cls.type_name}`", _fields(cls), _line(cls.__doc__)])
    return _table(["direction", "type", "body fields", "meaning"], rows)


def bus_events() -> str:
    classes: list[type[Message]] = [control.SessionCheckpoint]
    classes += _declared(errors, Message) + _declared(voice, Message)
    rows = [[f"`{c.type_name}`", _fields(c), _line(c.__doc__)] for c in classes]
    return _table(["type", "fields", "meaning"], rows)


_PY = {"int": "integer", "float": "number", "str": "string", "bool": "boolean", "None": "null"}
_ENUMS: dict[str, type[Enum]] = {"ShardState": ShardState, "VoiceState": VoiceState}


def _py_type(annotation: str) -> str:
    """A dataclass field's type in JSON words (enums list their values)."""
    if annotation.startswith("list["):
        inner = annotation[5:-1]
        return f"list of {_PY[inner]}s" if inner in _PY else "list of objects:"
    words = []
    for part in (p.strip() for p in annotation.split("|")):
        if part in _ENUMS:
            words.append("one of " + ", ".join(f"`{m.value}`" for m in _ENUMS[part]))
        else:
            words.append(_PY.get(part, "object"))
    return " or ".join(words)


def status_object() -> str:
    rows = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            kind = str(f.type)
            rows.append([f"`{prefix}{f.name}`", _py_type(kind)])
            inner = kind.removeprefix("list[").removesuffix("]").removesuffix(" | None")
            nested = getattr(sys.modules["ipc.status"], inner, None)
            if isinstance(nested, type) and dataclasses.is_dataclass(nested):
                walk(nested, f"{prefix}{f.name}{'[]' if kind.startswith('list[') else ''}.")

    walk(FleetStatus, "")
    return _table(["key", "type"], rows)


def checkpoint() -> str:
    rows = [[f"`{f.name}`", _py_type(str(f.type))] for f in dataclasses.fields(Checkpoint)]
    return _table(["key", "type"], rows)


SECTIONS = {
    "commands": commands,
    "replies": replies,
    "error-codes": error_codes,
    "control": control_messages,
    "bus-events": bus_events,
    "status": status_object,
    "checkpoint": checkpoint,
}


def render(name: str) -> str:
    return SECTIONS[name]()


if __name__ == "__main__":
    for section in SECTIONS:
        print(f"<!-- generated: {section} -->\n{render(section)}\n<!-- end: {section} -->\n")
