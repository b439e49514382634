"""Which host runs which application process of the fleet."""

from __future__ import annotations

from typing import Any

from runtime.cluster.appshare import app_slots, apps_running_elsewhere, my_apps


def test_the_fleets_processes_are_spread_over_the_hosts_by_name() -> None:
    slots = app_slots([("bot", 3), ("stats", 1)])
    assert slots == [("bot", 0, 3), ("bot", 1, 3), ("bot", 2, 3), ("stats", 0, 1)]
    hosts = ["b", "a"]
    assert my_apps(slots, hosts, "a") == {("bot", 0, 3), ("bot", 2, 3)}
    assert my_apps(slots, hosts, "b") == {("bot", 1, 3), ("stats", 0, 1)}
    assert my_apps(slots, [], "a") == set(slots)  # alone: all of them
    # every process on exactly one host, whatever the fleet
    for fleet in (["a"], ["a", "b"], ["a", "b", "c"], list("abcdefg")):
        placed = [my_apps(slots, fleet, h) for h in fleet]
        assert sorted(s for mine in placed for s in mine) == sorted(slots)


def test_what_other_hosts_run_is_read_from_their_entries_and_checked() -> None:
    live: dict[str, Any] = {
        "a": {"apps": [["bot", 0, 2]]},  # this host: not "elsewhere"
        "b": {"apps": [["bot", 1, 2], ["bot", "x", 2], "junk", ["bot", 1]]},
        "c": {"apps": "not a list"},
        "d": "not an entry",
    }
    assert apps_running_elsewhere(live, "a") == {("bot", 1, 2)}
