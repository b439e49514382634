"""``shardline status --watch``: frames redrawn in place, the fleet's totals in the header,
and a supervisor that stops answering said, then asked again with growing pauses."""

from __future__ import annotations

import io

from ipc.states import ShardState
from ipc.status import BusRecord, FleetStatus, ShardRecord
from runtime.statuswatch import (
    HIDE_CURSOR,
    HOME,
    HOME_AND_CLEAR,
    SHOW_CURSOR,
    StatusUnavailable,
    render,
    watch,
)


def fleet(rates: list[float]) -> FleetStatus:
    shards = [
        ShardRecord(
            id=n,
            state=ShardState.READY if n else ShardState.RESUMING,
            latency=40.0 + n,
            seq=n,
            session="s",
            guilds=3,
            events_per_second=rate,
            restarts=0,
            last_exit="",
            uptime=60.0,
            pid=100 + n,
            dropped=0,
        )
        for n, rate in enumerate(rates)
    ]
    bus = BusRecord(subscribers_reporting=0, subscriber_gaps=0, shard_drops=0, subscriber_drops=0)
    return FleetStatus(
        bus=bus, shard_count=len(rates), identifies_remaining=990, uptime=3725.0,
        shards=shards, apps=[], voice=[],
    )  # fmt: skip


def test_the_header_sums_the_fleet_and_the_table_shows_each_shard() -> None:
    frame = render(fleet([10.0, 32.5]), "", "12:00:00")
    head, *rest = frame.splitlines()
    assert "1/2 shards ready" in head and "42.5 events/s" in head
    assert "mean latency 40.5ms" in head and "identify budget 990" in head and "up 1h02m" in head
    table = "\n".join(rest)
    assert "resuming" in table and "32.5" in table and "41.0ms" in table


def test_frames_replace_each_other_and_an_unanswering_supervisor_is_said() -> None:
    answers: list[FleetStatus | str] = [fleet([5.0]), "no supervisor is running", "timed out"]
    answers.append(fleet([7.0]))
    pauses: list[float] = []

    def fetch() -> FleetStatus:
        answer = answers.pop(0)
        if isinstance(answer, str):
            raise StatusUnavailable(answer)
        return answer

    out = io.StringIO()
    assert watch(fetch, out, interval=1.0, tty=True, frames=4, sleep=pauses.append) == 0
    text = out.getvalue()
    assert text.startswith(HIDE_CURSOR + HOME_AND_CLEAR) and text.endswith(SHOW_CURSOR)
    frames = text.split(HOME)[2:]  # after the first clear, each frame starts at the top
    assert len(frames) == 4
    assert "5.0 events/s" in frames[0]
    assert "not answering (no supervisor is running)" in frames[1] and "5.0" in frames[1]
    assert "7.0 events/s" in frames[3] and "not answering" not in frames[3]
    assert pauses == [1.0, 2.0, 4.0]  # asked again later and later, then back to every second


def test_without_a_terminal_frames_follow_each_other() -> None:
    out = io.StringIO()
    watch(lambda: fleet([1.0]), out, tty=False, frames=2, sleep=lambda _: None)
    assert "\x1b" not in out.getvalue() and out.getvalue().count("shardline status") == 2


def test_a_reader_that_goes_away_ends_the_watch_quietly() -> None:
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    assert watch(lambda: fleet([1.0]), ClosedPipe(), tty=True, sleep=lambda _: None) == 0
