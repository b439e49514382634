"""Where each shard's resumable session is kept: in memory, and in the runtime state dir
(written atomically) so that the next ``shardline run`` resumes instead of identifying.

The file is outside input: each field is checked (the token is sent to ``resume_url``), and
a file that fails is moved aside with a warning naming the fault; its shards identify afresh.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from ipc.control import MAX_SESSION_ID_LENGTH, gateway_url_problem
from ipc.fields import check_snowflake
from runtime.rundir import check_owned_file

__all__ = ["Checkpoint", "SessionStore", "SessionsFileError", "parse_checkpoint"]

log = logging.getLogger("shardline.supervisor")
MAX_FILE_BYTES = 16 * 1024 * 1024  # a million shards' checkpoints fit well inside


class SessionsFileError(ValueError):
    """The sessions file is not what shardline writes; the message names the fault."""


@dataclass(frozen=True)
class Checkpoint:
    shard: int
    shard_count: int
    session_id: str
    seq: int
    resume_url: str
    saved_at: float  # time.time()
    guilds: int = 0
    user_id: str = ""  # the bot's, so that a resumed shard still knows its own voice states

    def resume_arg(self) -> str:
        """The ``--resume`` argument of ``python -m shards``."""
        body = {
            "session_id": self.session_id,
            "seq": self.seq,
            "resume_url": self.resume_url,
            "guilds": self.guilds,
            "user_id": self.user_id,
        }
        return orjson.dumps(body).decode()


def parse_checkpoint(raw: Any) -> Checkpoint:
    """One checkpoint from the file, every field checked; raises SessionsFileError."""
    if not isinstance(raw, dict):
        raise SessionsFileError(f"a checkpoint is {type(raw).__name__}, not an object")
    known = {
        "shard", "shard_count", "session_id", "seq", "resume_url", "saved_at", "guilds", "user_id"
    }  # fmt: skip
    missing = sorted(known - {"guilds", "user_id"} - set(raw))
    if missing:
        raise SessionsFileError(f"a checkpoint lacks {', '.join(missing)}")
    extra = sorted(set(raw) - known)
    if extra:
        raise SessionsFileError(f"a checkpoint has unknown field {extra[0]!r}")
    shard, count, seq = raw["shard"], raw["shard_count"], raw["seq"]
    guilds, saved_at = raw.get("guilds", 0), raw["saved_at"]
    for name, value in (("shard", shard), ("seq", seq), ("guilds", guilds)):
        if type(value) is not int or not 0 <= value < 2**63:
            raise SessionsFileError(f"{name} = {_cut(value)} is not a non-negative integer")
    if type(count) is not int or not 1 <= count <= 1_000_000 or shard >= count:
        raise SessionsFileError(f"shard_count = {_cut(count)} is not a count above shard {shard}")
    if type(saved_at) not in (int, float) or not math.isfinite(saved_at):
        raise SessionsFileError(f"saved_at = {_cut(saved_at)} is not a time")
    session_id = raw["session_id"]
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID_LENGTH:
        raise SessionsFileError(f"session_id = {_cut(session_id)} is not a short string")
    problem = gateway_url_problem(raw["resume_url"])
    if problem is not None:
        raise SessionsFileError(f"resume_url = {_cut(raw['resume_url'])} {problem}")
    user_id = raw.get("user_id", "")
    if not isinstance(user_id, str) or (user_id and check_snowflake(user_id) is not None):
        raise SessionsFileError(f"user_id = {_cut(user_id)} is not a snowflake")
    return Checkpoint(
        shard, count, session_id, seq, raw["resume_url"], float(saved_at), guilds, user_id
    )


def _cut(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class SessionStore:
    """Checkpoints by shard id, persisted to ``path`` as one JSON file."""

    def __init__(self, path: Path, max_age: float = 600.0) -> None:
        self.path = path
        self.max_age = max_age
        self._by_shard: dict[int, Checkpoint] = {}
        self.dirty = False

    def load(self, shard_count: int) -> int:
        """Read saved checkpoints for this shard count that are young enough to resume.
        Returns how many were loaded. A missing file loads none; a file that is not what we
        write is moved aside with a warning (its shards identify afresh); a file someone else
        owns or can write raises :class:`~runtime.rundir.UnsafeRuntimeDirError`."""
        if not check_owned_file(self.path):
            return 0
        try:
            checkpoints = self._read()
        except (OSError, SessionsFileError) as exc:
            aside = self.path.with_name(f"{self.path.name}.bad-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.warning(
                f"{self.path} is not a sessions file shardline wrote ({exc}); moved it to "
                f"{aside.name}, and every shard identifies afresh",
                extra={"fields": {"file": str(self.path)}},
            )
            return 0
        now = time.time()
        for checkpoint in checkpoints:
            if (
                checkpoint.shard_count == shard_count
                and 0 <= now - checkpoint.saved_at < self.max_age
            ):
                self._by_shard[checkpoint.shard] = checkpoint
        return len(self._by_shard)

    def _read(self) -> list[Checkpoint]:
        with open(self.path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise SessionsFileError(f"larger than {MAX_FILE_BYTES} bytes")
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SessionsFileError(f"not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("checkpoints"), list):
            raise SessionsFileError("not an object with a list of checkpoints")
        return [parse_checkpoint(raw) for raw in body["checkpoints"]]

    def get(self, shard: int) -> Checkpoint | None:
        return self._by_shard.get(shard)

    def put(self, checkpoint: Checkpoint) -> None:
        current = self._by_shard.get(checkpoint.shard)
        if (
            current is not None
            and current.session_id == checkpoint.session_id
            and current.seq > checkpoint.seq
        ):
            return  # an older checkpoint of the same session arrived late
        self._by_shard[checkpoint.shard] = checkpoint
        self.dirty = True

    def forget(self, shard: int) -> None:
        if self._by_shard.pop(shard, None) is not None:
            self.dirty = True

    def save(self) -> None:
        """Write every checkpoint atomically (temp file, fsync, rename)."""
        body: dict[str, Any] = {
            "saved_at": time.time(),
            "checkpoints": [
                asdict(c) for c in sorted(self._by_shard.values(), key=lambda c: c.shard)
            ],
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, orjson.dumps(body, option=orjson.OPT_INDENT_2))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self.dirty = False
