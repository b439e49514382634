"""Where each shard's resumable session is kept: in memory, and in the runtime state dir
(written atomically) so that the next ``shardline run`` resumes instead of identifying."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Checkpoint", "SessionStore"]


@dataclass(frozen=True)
class Checkpoint:
    shard: int
    shard_count: int
    session_id: str
    seq: int
    resume_url: str
    saved_at: float  # time.time()
    guilds: int = 0

    def resume_arg(self) -> str:
        """The ``--resume`` argument of ``python -m shards``."""
        body = {
            "session_id": self.session_id,
            "seq": self.seq,
            "resume_url": self.resume_url,
            "guilds": self.guilds,
        }
        return orjson.dumps(body).decode()


class SessionStore:
    """Checkpoints by shard id, persisted to ``path`` as one JSON file."""

    def __init__(self, path: Path, max_age: float = 600.0) -> None:
        self.path = path
        self.max_age = max_age
        self._by_shard: dict[int, Checkpoint] = {}
        self.dirty = False

    def load(self, shard_count: int) -> int:
        """Read saved checkpoints for this shard count that are young enough to resume.
        Returns how many were loaded; a missing or unreadable file loads none."""
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return 0
        now = time.time()
        for raw in data.get("checkpoints", []) if isinstance(data, dict) else []:
            try:
                checkpoint = Checkpoint(**raw)
            except TypeError:
                continue
            if checkpoint.shard_count == shard_count and now - checkpoint.saved_at < self.max_age:
                self._by_shard[checkpoint.shard] = checkpoint
        return len(self._by_shard)

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
