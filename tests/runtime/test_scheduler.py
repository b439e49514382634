"""The identify scheduler, fed requests and times."""

from __future__ import annotations

import pytest

from runtime.scheduler import IdentifyScheduler, ScheduleView, startup_seconds


def test_buckets_run_in_parallel_one_identify_per_interval() -> None:
    scheduler = IdentifyScheduler(max_concurrency=2, remaining=100, interval=5.0)
    for shard in range(6):
        scheduler.request(shard)
    assert scheduler.poll(0.0) == [0, 1]
    assert scheduler.poll(4.9) == []
    assert scheduler.next_deadline() == pytest.approx(5.25)
    assert scheduler.poll(5.25) == [2, 3]
    assert scheduler.poll(10.5) == [4, 5]
    assert scheduler.remaining == 94 and scheduler.waiting == 0


def test_lower_ids_are_waited_for_within_the_grace() -> None:
    scheduler = IdentifyScheduler(max_concurrency=2, remaining=100, interval=5.0)
    scheduler.expect([0, 1, 2, 3, 4], now=0.0, grace=3.0)
    scheduler.request(4)
    scheduler.request(1)
    assert scheduler.poll(0.1) == [1]  # 4 waits for 0 and 2, bucket 1 has nobody lower
    scheduler.request(2)
    scheduler.request(0)
    assert scheduler.poll(0.2) == [0]
    assert scheduler.poll(5.5) == [2]  # 3 never asked; 4 waits its turn behind 2
    assert scheduler.poll(11.0) == [4]


def test_a_missing_lower_shard_does_not_block_past_the_grace() -> None:
    scheduler = IdentifyScheduler(max_concurrency=1, remaining=100, interval=5.0)
    scheduler.expect([0, 1], now=0.0, grace=3.0)
    scheduler.request(1)
    assert scheduler.poll(1.0) == []
    assert scheduler.poll(3.0) == [1]


def test_an_exhausted_budget_grants_nothing_until_refilled() -> None:
    scheduler = IdentifyScheduler(max_concurrency=2, remaining=1)
    for shard in range(3):
        scheduler.request(shard)
    assert scheduler.poll(0.0) == [0]
    assert scheduler.poll(100.0) == [] and scheduler.starved
    assert scheduler.next_deadline() is None and scheduler.waiting == 2
    scheduler.refill(1000)
    assert not scheduler.starved
    assert sorted(scheduler.poll(100.0)) == [1, 2] and scheduler.remaining == 998


def test_startup_bound() -> None:
    assert startup_seconds(64, 16) == 15.0
    assert startup_seconds(16, 16) == 0.0


def test_a_late_identify_pushes_its_bucket_back_from_when_it_was_sent() -> None:
    scheduler = IdentifyScheduler(max_concurrency=2, remaining=100, interval=5.0)
    for shard in range(4):
        scheduler.request(shard)
    assert scheduler.poll(0.0) == [0, 1]
    scheduler.sent(0, 1.2)  # shard 0 was busy: its IDENTIFY left 1.2 s after the permit
    scheduler.sent(1, 0.05)  # on time: nothing moves
    assert scheduler.poll(5.3) == [3]
    assert scheduler.poll(6.3) == []
    assert scheduler.poll(6.45) == [2]  # 1.2 + 5 + the margin


def test_two_generations_share_the_buckets_and_each_gets_its_own_grants() -> None:
    """A reshard: generations with the same shard ids; shard 1 of either is bucket 1, one
    identify per bucket per interval across both, each permit to the generation that asked."""
    scheduler = IdentifyScheduler(max_concurrency=2, remaining=100, interval=5.0)
    mailbox: list[int] = []
    old, new = ScheduleView(scheduler, 0, mailbox), ScheduleView(scheduler, 1, mailbox)
    old.request(1)
    new.request(1)
    new.request(2)
    assert new.poll(0.0) == [2]  # bucket 1's grant went to old: kept for it
    assert old.poll(0.0) == [1]
    assert new.poll(1.0) == old.poll(1.0) == []  # bucket 1 waits its interval
    assert new.poll(6.0) == [1]
    new.request(3)
    old.poll(12.0)  # polled by the other generation: new's grant waits in the mailbox
    spent = scheduler.remaining
    new.close([3])  # the generation is gone: nothing is left for it, nor spent on it
    assert mailbox == [] and new.poll(20.0) == [] and scheduler.remaining == spent + 1
