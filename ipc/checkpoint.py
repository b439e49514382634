"""A shard's resumable session: the one checkpoint type. The shard's protocol makes it, the
control socket and the bus carry it (:class:`~ipc.control.SessionCheckpoint`), the session
store keeps it in a file, and ``python -m shards --resume`` receives it.

Every way in is outside input (the token is sent to ``resume_url``), so each one checks
every field with :meth:`Checkpoint.problem`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson

from ipc.control import MAX_SESSION_ID_LENGTH, SessionCheckpoint, gateway_url_problem
from ipc.fields import check_snowflake

__all__ = ["Checkpoint", "CheckpointError"]

MAX_SHARD_COUNT = 1_000_000
FIELDS = ("shard", "shard_count", "session_id", "seq", "resume_url", "saved_at", "guilds",
          "user_id")  # fmt: skip
OPTIONAL = ("saved_at", "guilds", "user_id")


class CheckpointError(ValueError):
    """A checkpoint that is not what shardline writes; the message names the field."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    shard: int
    shard_count: int
    session_id: str
    seq: int
    resume_url: str
    saved_at: float = 0.0  # time.time() when the supervisor stored it
    guilds: int = 0  # guilds on the shard, for status after a resume
    user_id: str = ""  # the bot's: a RESUME does not repeat READY's

    def problem(self) -> str | None:
        """What is wrong with this checkpoint, or None."""
        for name in ("shard", "seq", "guilds"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < 2**63:
                return f"{name} = {_cut(value)} is not a non-negative integer"
        count = self.shard_count
        if type(count) is not int or not 1 <= count <= MAX_SHARD_COUNT or self.shard >= count:
            return f"shard_count = {_cut(count)} is not a count above shard {self.shard}"
        if type(self.saved_at) not in (int, float) or not math.isfinite(self.saved_at):
            return f"saved_at = {_cut(self.saved_at)} is not a time"
        sid = self.session_id
        if not isinstance(sid, str) or not 0 < len(sid) <= MAX_SESSION_ID_LENGTH:
            return f"session_id = {_cut(sid)} is not a short non-empty string"
        url_problem = gateway_url_problem(self.resume_url)
        if url_problem is not None:
            return f"resume_url = {_cut(self.resume_url)} {url_problem}"
        uid = self.user_id
        if not isinstance(uid, str) or (uid and check_snowflake(uid) is not None):
            return f"user_id = {_cut(uid)} is not a snowflake"
        return None

    # -- the sessions file -----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> Checkpoint:
        """One checkpoint from a JSON object, every field checked; raises CheckpointError."""
        if not isinstance(raw, dict):
            raise CheckpointError(f"a checkpoint is {type(raw).__name__}, not an object")
        missing = [name for name in FIELDS if name not in OPTIONAL and name not in raw]
        if missing:
            raise CheckpointError(f"a checkpoint lacks {', '.join(missing)}")
        extra = sorted(set(raw) - set(FIELDS))
        if extra:
            raise CheckpointError(f"a checkpoint has unknown field {extra[0]!r}")
        checkpoint = cls(**raw)
        problem = checkpoint.problem()
        if problem is not None:
            raise CheckpointError(problem)
        return replace(checkpoint, saved_at=float(checkpoint.saved_at))

    # -- the shard's --resume argument -----------------------------------------------------

    def resume_arg(self) -> str:
        """The ``--resume`` argument of ``python -m shards`` (the shard knows its id)."""
        body = {k: v for k, v in asdict(self).items() if k not in ("shard", "shard_count")}
        return orjson.dumps(body).decode()

    @classmethod
    def from_resume_arg(cls, text: str, shard: int, shard_count: int) -> Checkpoint:
        """``--resume``'s checkpoint, checked; raises CheckpointError naming the fault."""
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise CheckpointError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CheckpointError("not a JSON object")
        return cls.from_json({**data, "shard": shard, "shard_count": shard_count})

    # -- the control socket and the bus ----------------------------------------------------

    def to_event(self) -> SessionCheckpoint:
        return SessionCheckpoint(
            shard=self.shard,
            session_id=self.session_id,
            seq=self.seq,
            resume_url=self.resume_url,
            guilds=self.guilds,
            user_id=self.user_id or None,
        )

    @classmethod
    def from_event(cls, event: SessionCheckpoint, shard_count: int, now: float) -> Checkpoint:
        """The checkpoint a worker sent, checked; raises CheckpointError."""
        raw = event.raw if isinstance(event.raw, dict) else {}
        fields = {k: raw.get(k) for k in ("shard", "session_id", "seq", "resume_url")}
        return cls.from_json(
            {
                **fields,
                "shard_count": shard_count,
                "saved_at": now,
                "guilds": raw.get("guilds", 0),
                "user_id": raw.get("user_id") or "",
            }
        )


def _cut(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
