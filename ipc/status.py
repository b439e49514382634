"""The status records: one per worker kind, and the fleet status that the supervisor builds,
``shardline.status`` carries, ``shardline status --json`` prints and the table renders.
The JSON keys are a documented contract (``docs/wire.md``); this module is where they are
spelled."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Self

from ipc.states import ShardState, VoiceState

__all__ = [
    "AppRecord",
    "BudgetRecord",
    "BusRecord",
    "FleetStatus",
    "HostRecord",
    "ReshardRecord",
    "ShardRecord",
    "SubscriberRecord",
    "VoiceSessionRecord",
    "reported_count",
    "reported_int",
    "reported_number",
    "reported_text",
]


# Reading a worker's status report (``control.shard_status``, ``control.voice_status``):
# its own process, but checked, so that one bad field cannot break ``shardline status``.


def reported_number(value: Any) -> float | None:
    if type(value) in (int, float) and math.isfinite(value):
        return float(value)
    return None


def reported_int(value: Any) -> int | None:
    return value if type(value) is int else None


def reported_count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def reported_text(value: Any, limit: int = 256) -> str | None:
    return value[:limit] if isinstance(value, str) else None


class _Record:
    """JSON in and out; reading checks each key's presence and type (a reply from another
    process is outside input)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload,no-any-return]

    @classmethod
    def from_json(cls, raw: Any) -> Self:
        if not isinstance(raw, dict):
            raise ValueError(f"{cls.__name__}: not an object")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in raw:
                has_default = f.default is not dataclasses.MISSING or (
                    f.default_factory is not dataclasses.MISSING
                )
                if has_default:  # a key added later: an older supervisor leaves it out
                    continue
                raise ValueError(f"{cls.__name__}: no {f.name!r}")
            values[f.name] = _read(f.type, raw[f.name], f"{cls.__name__}.{f.name}")
        return cls(**values)


_RECORDS: dict[str, type[_Record]] = {}


def _read(annotation: Any, value: Any, where: str) -> Any:
    text = str(annotation)
    if text.startswith("list["):
        inner = text[5:-1]
        if not isinstance(value, list):
            raise ValueError(f"{where}: not a list")
        return [_read(inner, item, where) for item in value]
    if text in _RECORDS:
        return _RECORDS[text].from_json(value)
    kinds: dict[str, type | tuple[type, ...]] = {
        "int": int,
        "float": (int, float),
        "str": str,
        "bool": bool,
    }
    options = [part.strip() for part in text.split("|")]
    if value is None and "None" in options:
        return None
    for option in options:
        if option in _RECORDS:
            return _RECORDS[option].from_json(value)
        if option == "ShardState":
            return ShardState(value)
        if option == "VoiceState":
            return VoiceState(value)
        kind = kinds.get(option)
        if (
            kind is not None
            and isinstance(value, kind)
            and not (option != "bool" and isinstance(value, bool))
        ):
            return value
        if option == "Any":
            return value
    raise ValueError(f"{where}: {value!r} is not {text}")


@dataclass(frozen=True, slots=True)
class ShardRecord(_Record):
    id: int
    state: ShardState
    latency: float | None  # ms
    seq: int | None
    session: str | None
    guilds: int
    events_per_second: float
    restarts: int
    last_exit: str
    uptime: float  # s
    pid: int | None
    dropped: int  # bus messages dropped by the shard at the high-water mark
    host: str = ""  # in a multi-host fleet: the host that runs it ("" on a single host)


@dataclass(frozen=True, slots=True)
class AppRecord(_Record):
    module: str
    index: int
    state: str  # running, restarting
    restarts: int
    pid: int | None
    host: str = ""  # in a multi-host fleet: the host that runs it ("" on a single host)


@dataclass(frozen=True, slots=True)
class VoiceSessionRecord(_Record):
    guild: str
    channel: str
    state: VoiceState
    ping: float | None  # ms
    packets: int
    late: int
    jitter: float | None  # p99 of the send clock, ms
    rejoins: int
    pid: int | None
    error: str | None  # the first cause of a failed session


@dataclass(frozen=True, slots=True)
class SubscriberRecord(_Record):
    name: str
    queued_bytes: int
    delivered: int
    dropped: int
    dropped_bytes: int


@dataclass(frozen=True, slots=True)
class BusRecord(_Record):
    subscribers_reporting: int
    subscriber_gaps: int
    shard_drops: int
    subscriber_drops: int
    subscribers: list[SubscriberRecord] = field(default_factory=list)
    # The bus is not reading from the shards now: every subscriber is behind (docs/wire.md).
    paused: bool = False


@dataclass(frozen=True, slots=True)
class HostRecord(_Record):
    """One host of a multi-host fleet, as the fleet's Redis shows it."""

    name: str
    reachable: bool  # it renewed its entry within the lease TTL
    shards: list[int]  # the shards whose leases it holds
    lease_age: float | None  # seconds since it last renewed (None: not known)


@dataclass(frozen=True, slots=True)
class BudgetRecord(_Record):
    """The fleet's daily identify budget (Discord's session_start_limit), kept in Redis."""

    remaining: int | None  # None: not known (Redis unreachable)
    resets_at: float | None  # unix time


@dataclass(frozen=True, slots=True)
class ReshardRecord(_Record):
    """A reshard under way (or just over): the target count, its shards READY so far, the
    state (``starting``, ``switched``, ``done``, ``aborted``) and why it was aborted."""

    current: int
    target: int
    ready: int
    state: str
    eta: float  # seconds until every new shard may have identified (the identify bound)
    problem: str = ""


@dataclass(frozen=True, slots=True)
class FleetStatus(_Record):
    bus: BusRecord
    shard_count: int
    identifies_remaining: int
    uptime: float
    shards: list[ShardRecord]
    apps: list[AppRecord]
    voice: list[VoiceSessionRecord]
    # A multi-host fleet ([cluster]): every host, the fleet's budget, and what is wrong with
    # the fleet's Redis ("" when nothing). Empty on a single host.
    hosts: list[HostRecord] = field(default_factory=list)
    budget: BudgetRecord | None = None
    cluster_problem: str = ""
    reshard: ReshardRecord | None = None  # the last reshard of this supervisor's life


for _cls in (
    ShardRecord,
    AppRecord,
    VoiceSessionRecord,
    SubscriberRecord,
    BusRecord,
    HostRecord,
    BudgetRecord,
    ReshardRecord,
    FleetStatus,
):
    _RECORDS[_cls.__name__] = _cls
