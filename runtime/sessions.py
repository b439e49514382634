"""Where each shard's resumable session is kept: in memory, and in the runtime state dir
(written atomically) so that the next ``shardline run`` resumes instead of identifying.

The file is outside input: each field is checked (the token is sent to ``resume_url``), and
a file that fails is moved aside with a warning naming the fault; its shards identify afresh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from ipc.checkpoint import Checkpoint, CheckpointError
from runtime.rundir import check_owned_file

__all__ = ["SessionStore", "SessionsFileError"]

log = logging.getLogger("shardline.supervisor")
MAX_FILE_BYTES = 16 * 1024 * 1024  # a million shards' checkpoints fit well inside


class SessionsFileError(ValueError):
    """The sessions file is not what shardline writes; the message names the fault."""


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
        try:
            return [Checkpoint.from_json(raw) for raw in body["checkpoints"]]
        except CheckpointError as exc:
            raise SessionsFileError(str(exc)) from None

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
                c.to_json() for c in sorted(self._by_shard.values(), key=lambda c: c.shard)
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
