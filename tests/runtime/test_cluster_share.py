"""``shards = "auto"``: hosts that follow the same rule converge to within one shard of each
other, without two of them ever counting on the same shard, as hosts join and leave."""

from __future__ import annotations

import random

import pytest

from runtime.cluster.share import plan_share, quotas


def settle(shards: int, hosts: list[str], owners: dict[int, str], rng: random.Random) -> int:
    """Hosts act in random order, as leases would let them, until nobody has a step left.
    Returns the number of rounds; fails on a shard taken that was not free."""
    for rounds in range(1, 200):
        moved = False
        for host in rng.sample(hosts, len(hosts)):
            step = plan_share(host, shards, hosts, owners, max_step=4)
            for shard in step.release:
                assert owners.pop(shard) == host
                moved = True
            for shard in step.take:
                assert shard not in owners, f"{host} took shard {shard} held by {owners[shard]}"
                owners[shard] = host
                moved = True
        if not moved:
            return rounds
    raise AssertionError("the hosts never settled")


def check_balanced(shards: int, hosts: list[str], owners: dict[int, str]) -> None:
    assert sorted(owners) == list(range(shards))  # every shard has exactly one owner
    counts = [sum(1 for o in owners.values() if o == h) for h in hosts]
    assert max(counts) - min(counts) <= 1
    assert counts == [quotas(shards, hosts)[h] for h in hosts]


@pytest.mark.parametrize("seed", range(5))
def test_hosts_join_and_leave_and_the_shares_stay_within_one(seed: int) -> None:
    rng = random.Random(seed)
    shards, hosts = 48, ["a", "b", "c"]
    owners: dict[int, str] = {}
    settle(shards, hosts, owners, rng)  # three hosts start together
    check_balanced(shards, hosts, owners)
    hosts.append("d")  # a host joins: shards are handed over to it
    before = dict(owners)
    settle(shards, hosts, owners, rng)
    check_balanced(shards, hosts, owners)
    moved = sum(1 for s in range(shards) if before[s] != owners[s])
    assert moved == 12  # only what the newcomer needs moves
    hosts.remove("b")  # a host dies: its leases expire and its shards are free
    owners = {s: o for s, o in owners.items() if o != "b"}
    settle(shards, hosts, owners, rng)
    check_balanced(shards, hosts, owners)


def test_a_dead_hosts_shards_are_free_for_the_plan_even_before_their_leases_expire() -> None:
    step = plan_share("a", 4, ["a"], {0: "a", 1: "gone", 2: "gone"})
    assert step.take == (1, 2, 3)  # the lease decides when; the plan already wants them


def test_uneven_counts_and_single_hosts() -> None:
    assert quotas(10, ["b", "a", "c"]) == {"a": 4, "b": 3, "c": 3}
    assert plan_share("solo", 5, ["solo"], {}).take == (0, 1, 2, 3, 4)
    assert plan_share("a", 5, ["a", "b"], {s: "a" for s in range(5)}).release == (3, 4)
