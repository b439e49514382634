"""The supervisor's part in a fleet, without Redis: what reaches the coordinator."""

from __future__ import annotations

import asyncio
from typing import Any

from ipc.checkpoint import Checkpoint
from runtime.clusterhost import ClusterHost
from runtime.config import ClusterConfig


class Recorder:
    def __init__(self) -> None:
        self.saved: list[Checkpoint] = []

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        self.saved.append(checkpoint)


class Fleet:
    def add(self, shard: int, checkpoint: Checkpoint | None) -> Any:
        return None

    async def keep_alive(self, worker: Any) -> None:
        return None


def checkpoint(session: str, seq: int) -> Checkpoint:
    return Checkpoint(3, 8, session, seq, "wss://gateway")


async def test_redis_gets_each_checkpoint_one_report_late_within_a_session() -> None:
    """A host that takes a shard over after a crash resumes from a point the applications
    surely had, and the replay covers what was in flight when the host died."""
    host = ClusterHost(
        ClusterConfig(redis_url="redis://x", fleet="f", host="a"),
        Fleet(),  # type: ignore[arg-type]
        token="t",
        shard_count=8,
        max_concurrency=1,
        remaining=1000,
        reset_after_ms=0,
        identify_interval=5.0,
    )
    recorder = Recorder()
    host.coordinator = recorder  # type: ignore[assignment]
    host.start_shard(3, checkpoint("s1", 40))  # taken over from Redis at seq 40
    for seq in (41, 55, 70):
        host.checkpoint(checkpoint("s1", seq))
    host.checkpoint(checkpoint("s2", 1))  # a new session: its READY point, at once
    host.checkpoint(checkpoint("s2", 9))
    await asyncio.gather(*list(host._tasks))
    assert [(c.session_id, c.seq) for c in recorder.saved] == [
        ("s1", 40),
        ("s1", 41),
        ("s1", 55),
        ("s2", 1),
        ("s2", 1),
    ]
