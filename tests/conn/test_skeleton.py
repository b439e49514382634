"""Backoff, the pacemaker and the inbox: the pieces both connection loops stand on."""

from __future__ import annotations

import asyncio

import pytest

from conn.backoff import backoff_delay
from conn.inbox import Inbox
from conn.pacemaker import Beat, Pacemaker


def test_backoff_doubles_to_its_cap_and_jitters_within_the_upper_half() -> None:
    assert backoff_delay(0, 1.0, 60.0) == 0.0
    highs = [backoff_delay(n, 1.0, 60.0, rng=lambda: 1.0) for n in range(1, 9)]
    assert highs == [1, 2, 4, 8, 16, 32, 60, 60]
    lows = [backoff_delay(n, 1.0, 60.0, rng=lambda: 0.0) for n in range(1, 9)]
    assert lows == [h / 2 for h in highs]
    assert backoff_delay(10_000, 1.0, 60.0, rng=lambda: 1.0) == 60.0  # no overflow


def test_the_pacemaker_beats_after_a_jittered_start_then_every_interval() -> None:
    beats = Pacemaker(rng=lambda: 0.25)
    assert beats.due(0.0) is None and beats.deadline is None
    beats.start(40.0, now=100.0)
    assert beats.deadline == 110.0
    assert beats.due(109.9) is None
    assert beats.due(110.0) is Beat.SEND
    beats.sent(110.0)
    beats.acked(110.05)
    assert beats.latency == pytest.approx(0.05)
    assert beats.deadline == 150.0 and beats.due(150.0) is Beat.SEND


def test_a_beat_due_while_the_last_is_unacknowledged_is_a_zombie() -> None:
    beats = Pacemaker(rng=lambda: 0.0)
    beats.start(10.0, now=0.0)
    beats.sent(0.0)
    assert beats.due(9.0) is None
    assert beats.due(10.0) is Beat.ZOMBIE
    beats.stop()
    assert beats.due(1e9) is None and not beats.awaiting_ack


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_inbox_returns_at_once_for_an_item_or_a_past_deadline() -> None:
    clock = FakeClock()
    inbox: Inbox[str] = Inbox(clock)
    inbox.put("frame")
    await asyncio.wait_for(inbox.wait(None), 1)  # an item waiting: no sleep
    assert inbox.take() == "frame" and not inbox
    clock.now = 10.0
    await asyncio.wait_for(inbox.wait(5.0), 1)  # the deadline passed on the loop's clock


async def test_the_inbox_wakes_for_an_item_put_while_it_sleeps() -> None:
    inbox: Inbox[int] = Inbox(FakeClock())
    waiter = asyncio.ensure_future(inbox.wait(None))
    await asyncio.sleep(0)
    assert not waiter.done()
    inbox.put(1)
    await asyncio.wait_for(waiter, 1)
    assert len(inbox) == 1
