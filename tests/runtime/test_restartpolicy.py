"""The one restart policy, as a table of cases: no processes."""

from __future__ import annotations

import pytest

from ipc.exits import ExitStatus
from runtime.config import RestartConfig
from runtime.restartpolicy import CRASH_FORGIVEN_AFTER, Exit, after_exit, describe, is_hung

RESTART = RestartConfig(backoff_initial=1.0, backoff_max=60.0, max_restarts=3)


def decide(code: int, **kwargs: object) -> object:
    values: dict[str, object] = {
        "asked_to_stop": False,
        "crashes_in_a_row": 0,
        "ran_for": 1.0,
        "restart": RESTART,
        "recent_crashes": 1,
        "rng": lambda: 1.0,
    }
    values.update(kwargs)
    return after_exit(code, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [0, 1, -9, ExitStatus.FATAL])
def test_an_exit_we_asked_for_is_a_stop_whatever_its_status(code: int) -> None:
    decision = decide(code, asked_to_stop=True)
    assert decision.next is Exit.STOPPED and decision.last_exit == f"stopped (status {code})"


def test_fatal_and_usage_stop_the_fleet_with_the_reason() -> None:
    fatal = decide(ExitStatus.FATAL, advice="4004: the token is wrong")
    assert (fatal.next, fatal.reason) == (Exit.FATAL, "4004: the token is wrong")
    assert "see its log" in decide(ExitStatus.FATAL).reason
    usage = decide(ExitStatus.USAGE)
    assert usage.next is Exit.FATAL and "command line or environment" in usage.reason


def test_crashes_in_a_row_back_off_exponentially() -> None:
    delays = []
    crashes = 0
    for _ in range(8):
        decision = decide(1, crashes_in_a_row=crashes)
        assert decision.next is Exit.RESPAWN
        crashes = decision.crashes_in_a_row
        delays.append(decision.delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_process_that_ran_a_while_starts_the_count_afresh() -> None:
    decision = decide(-9, crashes_in_a_row=6, ran_for=CRASH_FORGIVEN_AFTER)
    assert (decision.crashes_in_a_row, decision.delay) == (1, 1.0)
    assert decision.last_exit == "killed by signal 9" == describe(-9)


def test_too_many_crashes_in_the_window_gives_up() -> None:
    assert decide(1, recent_crashes=3).next is Exit.RESPAWN
    given_up = decide(1, recent_crashes=4)
    assert given_up.next is Exit.GIVE_UP and "restart.max_restarts (3)" in given_up.reason


def test_hang_is_silence_longer_than_the_timeout() -> None:
    assert not is_hung(100.0, 130.0, 30.0)
    assert is_hung(100.0, 130.1, 30.0)
