"""A reshard of a multi-host fleet (docs/resharding.md), through one record in Redis.

Any host may start one (``shardline reshard`` on it): it writes the record, ``starting``,
with the next generation's number. Each host, at its turn, sees the record and stages the
next generation's events in its bus, says so in its entry (``next.staged``), and once every
live host has, takes its share of the new generation's shards on the fleet's identify
schedule. The fleet's driver (the live host with the lowest name; any host can be it, so a
reshard outlives the host that started it) moves the record on: ``switching`` once every
new shard is READY with its guilds, whereupon each host switches its applications over;
``closing`` once every host has, whereupon each host closes the old generation's shards and
runs the new one as the fleet's; then the record goes. Called off (a request, a new shard
failing fatally) while ``starting``, the record says ``aborted`` and every host drops the
new generation. Each move is a compare-and-set on (id, state): an abort cannot overtake a
switch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ipc.states import ShardState
from runtime.cluster.identify import answer
from runtime.cluster.keys import FleetKeys
from runtime.reshard import ready_to_switch

__all__ = [
    "FleetReshard",
    "Generation",
    "ReshardStore",
    "Step",
    "all_staged",
    "driver_step",
    "next_generation_shards",
]

STATES = ("starting", "switching", "closing", "aborted")
ABORTED_KEPT_MS = 600_000  # an aborted record goes by itself if no host is left to end it

# KEYS: reshard, generation. ARGV: id, from state, to state, problem, generation JSON ("":
# none). -> 1 moved, 0 the record is not (id, from) any more.
MOVE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local record = cjson.decode(raw)
if record['id'] ~= ARGV[1] or record['state'] ~= ARGV[2] then return 0 end
record['state'] = ARGV[3]
if ARGV[4] ~= '' then record['problem'] = ARGV[4] end
if ARGV[3] == 'aborted' then
  redis.call('SET', KEYS[1], cjson.encode(record), 'PX', tonumber(ARGV[6]))
else
  redis.call('SET', KEYS[1], cjson.encode(record))
end
if ARGV[5] ~= '' then redis.call('SET', KEYS[2], ARGV[5]) end
return 1
"""

# KEYS: reshard. ARGV: id. -> 1 when the record was that reshard's and is gone.
END = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
if cjson.decode(raw)['id'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


@dataclass(frozen=True)
class FleetReshard:
    """The reshard under way, as the record in Redis holds it."""

    id: str
    number: int  # the new generation's number: its shard keys' space, its schedule offset
    current: int
    target: int
    state: str
    eta: float
    problem: str = ""
    started: float = 0.0  # when (s since the epoch), for the ETA every host shows

    @property
    def space(self) -> str:
        return generation_space(self.number)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "started": self.started,
                "id": self.id,
                "number": self.number,
                "current": self.current,
                "target": self.target,
                "state": self.state,
                "eta": self.eta,
                "problem": self.problem,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> FleetReshard | None:
        """The record, or None when it is not one (Redis is outside input)."""
        try:
            data = orjson.loads(raw)
            record = cls(
                id=str(data["id"]),
                number=int(data["number"]),
                current=int(data["current"]),
                target=int(data["target"]),
                state=str(data["state"]),
                eta=float(data["eta"]),
                problem=str(data.get("problem") or ""),
                started=float(data.get("started") or 0.0),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if record.state not in STATES or not 0 < record.target <= 65536 or record.number < 1:
            return None
        return record


@dataclass(frozen=True)
class Generation:
    """The generation of shards a fleet runs: its count, and where its keys are."""

    count: int
    number: int  # 0: the fleet's first

    @property
    def space(self) -> str:
        return generation_space(self.number)

    def to_json(self) -> bytes:
        return orjson.dumps({"count": self.count, "number": self.number})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Generation | None:
        try:
            data = orjson.loads(raw)
            generation = cls(int(data["count"]), int(data["number"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not 0 < generation.count <= 65536 or generation.number < 0:
            return None
        return generation


def generation_space(number: int) -> str:
    return f"g{number}:" if number else ""


class ReshardStore:
    """The reshard record and the fleet's generation, in Redis."""

    def __init__(self, redis: Any, keys: FleetKeys, where: str = "Redis") -> None:
        self.redis = redis
        self.keys = keys
        self.where = where
        self._move = redis.register_script(MOVE)
        self._end = redis.register_script(END)

    async def _call(self, call: Any) -> Any:
        return await answer(call, self.where, ": the reshard cannot move on until it answers")

    async def read(self) -> FleetReshard | None:
        raw = await self._call(self.redis.get(self.keys.reshard))
        return None if raw is None else FleetReshard.from_json(raw)

    async def generation(self) -> Generation | None:
        raw = await self._call(self.redis.get(self.keys.generation))
        return None if raw is None else Generation.from_json(raw)

    async def begin(self, current: int, target: int, eta: float) -> FleetReshard | None:
        """Write a new reshard, ``starting``; None when one is under way already."""
        number = int(await self._call(self.redis.incr(self.keys.generations)))
        now = time.time()
        record = FleetReshard(
            f"{number}-{int(now * 1000)}", number, current, target, "starting", eta, "", now
        )
        written = await self._call(self.redis.set(self.keys.reshard, record.to_json(), nx=True))
        return record if written else None

    async def move(
        self,
        record: FleetReshard,
        state: str,
        problem: str = "",
        generation: Generation | None = None,
    ) -> bool:
        """``record`` to ``state`` if it is still as read; with ``generation``, the fleet's
        generation becomes that in the same step."""
        moved = await self._call(
            self._move(
                keys=[self.keys.reshard, self.keys.generation],
                args=[
                    record.id,
                    record.state,
                    state,
                    problem,
                    b"" if generation is None else generation.to_json(),
                    ABORTED_KEPT_MS,
                ],
            )
        )
        return bool(int(moved))

    async def end(self, record: FleetReshard) -> None:
        await self._call(self._end(keys=[self.keys.reshard], args=[record.id]))


def next_generation_shards(
    live: dict[str, dict[str, Any]], space: str
) -> Iterable[tuple[str, dict[str, Any]]]:
    """(host, its ``next`` part) for each live host taking part in generation ``space``."""
    for name, entry in live.items():
        upcoming = entry.get("next")
        if isinstance(upcoming, dict) and upcoming.get("space") == space:
            yield name, upcoming


@dataclass(frozen=True)
class Step:
    """The driver's decision: the record's next state ("" stays; "end": the record goes),
    with why (an abort's problem), and the new shards ready so far."""

    state: str
    ready: int
    problem: str = ""


def driver_step(
    record: FleetReshard,
    live: dict[str, dict[str, Any]],
    ready_since: dict[int, float],
    now: float,
) -> Step:
    """What the fleet's driver does with ``record`` given every live host's entry (it keeps
    ``ready_since``: when it first saw each new shard READY)."""
    taking_part = dict(next_generation_shards(live, record.space))
    adopted = {n for n, e in live.items() if e.get("generation", "") == record.space}
    states: dict[int, tuple[ShardState, int]] = {}
    for part in taking_part.values():
        for shard in part.get("shards") or []:
            try:
                ident, state, pending = (
                    int(shard["id"]),
                    ShardState(shard["state"]),
                    shard["pending"],
                )
            except (KeyError, TypeError, ValueError):
                continue
            if 0 <= ident < record.target and isinstance(pending, int):
                states[ident] = (state, pending)
    for ident, (state, _) in states.items():
        if state is ShardState.READY:
            ready_since.setdefault(ident, now)
        else:
            ready_since.pop(ident, None)
    shards = [
        (*states.get(i, (ShardState.STARTING, 1)), ready_since.get(i)) for i in range(record.target)
    ]
    ready, every = ready_to_switch(shards, now)
    everyone = set(live)
    if record.state == "starting":
        problems = [f"host {n}: {p['problem']}" for n, p in taking_part.items() if p.get("problem")]
        if problems:
            return Step("aborted", ready, problems[0])
        staged = {n for n, p in taking_part.items() if p.get("staged")}
        if every and staged >= everyone:
            return Step("switching", ready)
    elif record.state == "switching":
        switched = {n for n, p in taking_part.items() if p.get("switched")}
        if switched | adopted >= everyone:
            return Step("closing", ready)
    elif record.state == "closing":
        if adopted >= everyone:
            return Step("end", ready)
    elif record.state == "aborted" and not taking_part:
        return Step("end", ready)
    return Step("", ready)


def all_staged(record: FleetReshard, live: dict[str, dict[str, Any]]) -> bool:
    """Every live host stages the new generation's events: its shards may start."""
    staged = {n for n, p in next_generation_shards(live, record.space) if p.get("staged")}
    adopted = {n for n, e in live.items() if e.get("generation", "") == record.space}
    return staged | adopted >= set(live)
