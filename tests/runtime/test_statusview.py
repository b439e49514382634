"""The status table of a multi-host fleet, and reading a status from an older supervisor."""

from __future__ import annotations

import dataclasses

from ipc.status import BudgetRecord, FleetStatus, HostRecord
from runtime.statusview import format_status
from tests.runtime.test_statuswatch import fleet


def test_a_fleet_shows_each_shards_host_every_host_and_the_budget() -> None:
    status = fleet([1.0, 2.0, 3.0])
    shards = [dataclasses.replace(s, host=h) for s, h in zip(status.shards, "aab", strict=True)]
    status = dataclasses.replace(
        status,
        shards=shards,
        hosts=[HostRecord("a", True, [0, 1], 0.4), HostRecord("b", False, [2], None)],
        budget=BudgetRecord(994, 1_800_000_000.0),
        cluster_problem="Redis at redis://:***@r:6379 is unreachable",
    )
    table = format_status(status)
    rows = table.splitlines()
    assert rows[0].endswith("host") and rows[1].endswith("  a") and rows[3].endswith("  b")
    assert "fleet: Redis at redis://:***@r:6379 is unreachable" in table
    assert "fleet identify budget: 994 left, resets 2027-01-15" in table
    assert "host a: reachable, renewed 0.4s ago, shards 0-1" in table
    assert "host b: UNREACHABLE, renewed -, shards 2" in table
    assert "host" not in format_status(fleet([1.0])).splitlines()[0]  # a single host: no column


def test_a_status_from_an_older_supervisor_reads_with_the_new_keys_at_their_defaults() -> None:
    raw = fleet([1.0]).to_json()
    for key in ("hosts", "budget", "cluster_problem"):
        del raw[key]
    del raw["shards"][0]["host"]
    status = FleetStatus.from_json(raw)
    assert status.hosts == [] and status.budget is None and status.shards[0].host == ""
    assert FleetStatus.from_json(fleet([1.0]).to_json()) == fleet([1.0])
