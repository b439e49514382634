"""The switch from one generation of shards to the next during a reshard, without an event
lost or delivered twice. Sans-I/O: bus messages in, bus messages to deliver out.

During the overlap both generations receive every guild's events (Discord sends a guild's
events to every session that holds it). The old generation's are delivered as usual, and each
one's key is remembered; the new generation's are staged, not delivered. At the switch the
staged ones go out in order, except those the old generation already delivered (matched by
key, one for one) and the new sessions' start-up burst (READY and the GUILD_CREATEs of guilds
the applications already have); from then on the old generation's events are dropped and the
new generation's delivered, again except those already delivered. A new-generation event that
is not delivered still reaches applications as a three-frame ``DUPLICATE`` marker carrying
its envelope, so that a consumer counting each session's seq sees no gap.

An event's key is its type and a hash of its ``d`` with sorted keys: the same event in two
sessions is the same object; two different events differ (a message id, a timestamp...).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ipc.codec import DUPLICATE

__all__ = ["CutOver", "event_key", "is_dispatch"]

Key = bytes
START_UP = (b"READY", b"GUILD_CREATE")  # the new sessions' own burst, before the switch
REMEMBER = 120.0  # seconds an old-generation key is kept to match a new-generation event


def event_key(body: bytes) -> Key | None:
    """The key of a dispatch's gateway payload (None: not a dispatch we can read)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    t = payload.get("t") if isinstance(payload, dict) else None
    if not isinstance(t, str):
        return None
    d = orjson.dumps(payload.get("d"), option=orjson.OPT_SORT_KEYS)
    return t.encode() + b" " + hashlib.blake2b(d, digest_size=16).digest()


@dataclass(slots=True)
class _Staged:
    frames: list[Any]
    key: Key | None
    start_up: bool


class CutOver:
    def __init__(
        self,
        limit_bytes: int,
        *,
        remember: float = REMEMBER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.remember = remember
        self.clock = clock
        self.switched = False
        self.aborted = False  # the new generation is being stopped: its dispatches go nowhere
        self.overflowed = False  # the staged events outgrew limit_bytes: abort the reshard
        self.staged_bytes = 0
        self.delivered_old = 0
        self.duplicates = 0  # new-generation events not delivered (matched, or start-up)
        self._staged: deque[_Staged] = deque()
        self._old: dict[Key, int] = {}  # key -> how many the old generation delivered
        self._old_times: deque[tuple[float, Key]] = deque()

    @property
    def staged(self) -> int:
        """New-generation messages waiting for the switch."""
        return len(self._staged)

    # -- the old generation -----------------------------------------------------------------

    def old(self, frames: list[Any]) -> bool:
        """An old-generation message: True to deliver it (before the switch), remembering
        its key; False after the switch (the new generation carries everything)."""
        if not is_dispatch(frames):
            return True  # shardline's own events (the old shards' errors...) always go
        if self.switched:
            return False
        self.delivered_old += 1
        key = event_key(frames[2])
        if key is not None:
            now = self.clock()
            self._forget_old(now)
            self._old[key] = self._old.get(key, 0) + 1
            self._old_times.append((now, key))
        return True

    # -- the new generation ----------------------------------------------------------------

    def new(self, frames: list[Any]) -> list[list[Any]]:
        """A new-generation message: what to deliver now (no dispatch before the switch;
        shardline's own events, such as a shard's errors, at once)."""
        dispatch = is_dispatch(frames)
        if not dispatch:
            return [frames]
        if self.aborted:
            return []
        key = event_key(frames[2])
        if not self.switched:
            start_up = frames[0].split(b" ", 1)[0] in START_UP
            self._staged.append(_Staged(frames, key, start_up))
            self.staged_bytes += sum(len(f) for f in frames)
            if self.staged_bytes > self.limit_bytes:
                self.overflowed = True
            return []
        return [self._unless_delivered(frames, key)]

    def abort(self) -> None:
        """The reshard is called off: what was staged is dropped, and whatever the new
        generation still sends before its shards are gone."""
        self.aborted = True
        self._staged.clear()
        self.staged_bytes = 0

    def switch(self) -> list[list[Any]]:
        """From now on the new generation: its staged events not delivered already, in
        order (and a marker in place of each one that was)."""
        self.switched = True
        out = []
        while self._staged:
            staged = self._staged.popleft()
            if staged.start_up:
                self.duplicates += 1
                out.append(_marker(staged.frames))
            else:
                out.append(self._unless_delivered(staged.frames, staged.key))
        self.staged_bytes = 0
        return out

    def _unless_delivered(self, frames: list[Any], key: Key | None) -> list[Any]:
        self._forget_old(self.clock())
        if key is not None and self._old.get(key, 0) > 0:
            self._old[key] -= 1
            if not self._old[key]:
                del self._old[key]
            self.duplicates += 1
            return _marker(frames)
        return frames

    def _forget_old(self, now: float) -> None:
        times, counts = self._old_times, self._old
        while times and now - times[0][0] > self.remember:
            _, key = times.popleft()
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)


def is_dispatch(frames: list[Any]) -> bool:
    return len(frames) == 3 and b'"dispatch"' in frames[1]


def _marker(frames: list[Any]) -> list[Any]:
    """A message not delivered, as its envelope only (a consumer's seq stays whole)."""
    return [DUPLICATE, frames[1], b""]
