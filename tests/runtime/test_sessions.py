"""The sessions file is outside input: every field is checked, a bad file is moved aside."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from ipc.checkpoint import Checkpoint
from runtime.rundir import UnsafeRuntimeDirError
from runtime.sessions import SessionStore

GOOD: dict[str, Any] = {
    "shard": 0,
    "shard_count": 2,
    "session_id": "abc",
    "seq": 41,
    "resume_url": "wss://gateway-us-east1-b.discord.gg",
    "saved_at": 0.0,
    "guilds": 3,
}


def write(path: Path, body: Any) -> None:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    path.write_bytes(data)
    os.chmod(path, 0o600)


def test_a_good_file_round_trips(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions.json")
    store.put(Checkpoint(0, 2, "abc", 41, "wss://g.example", time.time(), 3))
    store.save()
    again = SessionStore(tmp_path / "sessions.json")
    assert again.load(2) == 1 and again.get(0) == store.get(0)


@pytest.mark.parametrize(
    ("change", "fault"),
    [
        ({"saved_at": "yesterday"}, "saved_at"),
        ({"shard": "0"}, "shard"),
        ({"seq": -1}, "seq"),
        ({"seq": 1.5}, "seq"),
        ({"shard_count": 0}, "shard_count"),
        ({"shard": 5}, "shard_count"),
        ({"session_id": ["x"]}, "session_id"),
        ({"resume_url": "wss://attacker.example:9/?steal=1"}, "resume_url"),
        ({"resume_url": "http://attacker.example"}, "resume_url"),
        ({"resume_url": None}, "resume_url"),
        ({"guilds": None}, "guilds"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_a_bad_field_moves_the_file_aside_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: dict[str, Any], fault: str
) -> None:
    path = tmp_path / "sessions.json"
    write(path, {"checkpoints": [{**GOOD, "saved_at": time.time(), **change}]})
    store = SessionStore(path)
    with caplog.at_level(logging.WARNING):
        assert store.load(2) == 0
    assert not path.exists()
    assert len(list(tmp_path.glob("sessions.json.bad-*"))) == 1
    assert str(path) in caplog.text and fault in caplog.text


@pytest.mark.parametrize(
    "data", [b"\x00\xff garbage", b"[1, 2]", b'{"checkpoints": 5}', b"", b'{"checkpoints": [7]}']
)
def test_garbage_is_moved_aside_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    path = tmp_path / "sessions.json"
    write(path, data)
    with caplog.at_level(logging.WARNING):
        assert SessionStore(path).load(2) == 0
    assert "identifies afresh" in caplog.text and not path.exists()


def test_a_sessions_file_others_can_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    write(path, {"checkpoints": [{**GOOD, "saved_at": time.time()}]})
    os.chmod(path, 0o646)
    with pytest.raises(UnsafeRuntimeDirError, match="writable by other users"):
        SessionStore(path).load(2)


def test_a_checkpoint_never_moves_backwards(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions.json")
    store.put(Checkpoint(0, 2, "abc", 41, "wss://g.example", 1.0))
    store.put(Checkpoint(0, 2, "abc", 12, "wss://g.example", 2.0))
    assert store.get(0).seq == 41  # type: ignore[union-attr]
