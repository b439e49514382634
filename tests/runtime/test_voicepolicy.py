"""The supervisor's voice retry policy: one row per outcome, and the op 4 budget."""

from __future__ import annotations

import pytest

from ipc.states import VoiceOutcome
from runtime.voicepolicy import (
    MAX_REJOINS,
    REJOIN_MAX,
    WAIT_FOR_SERVER,
    Next,
    Op4Budget,
    after_exit,
)
from voiceworker.gateway import VOICE_CLOSE_CODES


@pytest.mark.parametrize(
    ("outcome", "step"),
    [
        (VoiceOutcome.STOP, Next.FAIL),
        (VoiceOutcome.REJOIN, Next.REJOIN),
        (VoiceOutcome.RESUME, Next.REJOIN),
        (VoiceOutcome.REIDENTIFY, Next.REJOIN),
        (VoiceOutcome.WAIT_SERVER, Next.WAIT_SERVER),
        (None, Next.REJOIN),  # a crash, or an outcome nobody named
    ],
)
def test_each_outcome_has_its_step(outcome: VoiceOutcome | None, step: Next) -> None:
    assert after_exit(outcome, "why", 0, rng=lambda: 1.0).next is step


def test_every_close_code_of_the_worker_maps_to_a_known_outcome() -> None:
    known = {o.value for o in VoiceOutcome}
    for outcome, _ in VOICE_CLOSE_CODES.values():
        assert outcome.value in known
        assert after_exit(outcome, "x", 0).next in Next
    # codes a retry cannot fix are never retried (4021 is "rate limited")
    for code in (4001, 4002, 4005, 4012, 4016, 4017, 4020, 4021, 4022):
        assert after_exit(VOICE_CLOSE_CODES[code][0], "x", 0).next is Next.FAIL


def test_rejoins_back_off_with_jitter_and_then_give_up() -> None:
    delays = [
        after_exit(VoiceOutcome.REJOIN, "x", n, rng=lambda: 1.0).delay for n in range(MAX_REJOINS)
    ]
    assert delays == sorted(delays) and delays[0] == 1.0 and delays[-1] <= REJOIN_MAX
    low = after_exit(VoiceOutcome.REJOIN, "x", 3, rng=lambda: 0.0).delay
    assert low == delays[3] / 2  # jitter: half to all of the bound
    final = after_exit(VoiceOutcome.REJOIN, "the server said no", MAX_REJOINS)
    assert final.next is Next.FAIL and "the server said no" in final.reason
    assert "rejoins in a row" in final.reason
    assert after_exit(VoiceOutcome.WAIT_SERVER, "x", 0).delay == WAIT_FOR_SERVER


def test_the_op4_budget_holds_rejoins_never_the_bots_own_joins() -> None:
    budget = Op4Budget(per_minute=3)
    assert all(budget.take(0, 10.0 + n) for n in range(3))
    assert not budget.take(0, 20.0) and budget.wait(0, 20.0) == pytest.approx(50.0)
    assert budget.take(1, 20.0)  # another shard has its own
    assert budget.take(0, 70.0)  # the first one left the window
    for n in range(10):
        budget.record(2, 100.0 + n)  # joins the bot asked for all go out, and are counted
    assert not budget.take(2, 110.0)  # so a rejoin now waits for them
