"""``shards = "auto"``: which shards this host should take or hand over, sans-I/O.

Every host runs the same rule on the same view (the live hosts and who holds which shard):
with ``S`` shards and ``H`` live hosts, the ``S mod H`` first hosts by name aim for
``ceil(S / H)`` shards, the others for ``floor(S / H)``, so every host ends within one of
every other. A host over its quota hands over its highest ids; a host under it takes free
shards, lowest ids first, but only up to what the hosts over their quota will free, so two
hosts never fight over one shard: a shard changes hands only by being released (a resumable
close on the old host, then a RESUME on the new one) or by its lease expiring (a dead host).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ShareStep", "plan_share", "quotas"]


@dataclass(frozen=True)
class ShareStep:
    """What one host should do now: shards to take (free ones) and to hand over."""

    take: tuple[int, ...] = ()
    release: tuple[int, ...] = ()


def quotas(shard_count: int, hosts: list[str]) -> dict[str, int]:
    """Each live host's target number of shards (the first ``S mod H`` by name get one more)."""
    ordered = sorted(set(hosts))
    if not ordered:
        return {}
    base, extra = divmod(shard_count, len(ordered))
    return {host: base + (1 if i < extra else 0) for i, host in enumerate(ordered)}


def plan_share(
    me: str, shard_count: int, hosts: list[str], owners: dict[int, str], *, max_step: int = 0
) -> ShareStep:
    """This host's next step toward its share. ``owners`` maps each held shard to its
    holder (a shard absent from it is free); ``hosts`` are the live hosts (``me`` among
    them). ``max_step`` (0: no limit) bounds how many shards one step takes or hands over,
    so a big move goes a few shards at a time."""
    share = quotas(shard_count, [*hosts, me])
    mine = sorted(s for s, owner in owners.items() if owner == me)
    quota = share[me]
    if len(mine) > quota:
        surplus = mine[quota:]  # hand over the highest ids
        if max_step:
            surplus = surplus[-max_step:]
        return ShareStep(release=tuple(surplus))
    wanted = quota - len(mine)
    if wanted == 0:
        return ShareStep()
    free = [s for s in range(shard_count) if s not in owners or owners[s] not in share]
    # Take no more than this host's rank among the hosts that are short allows, so that two
    # short hosts do not both count on the same free shards.
    short = sorted(h for h in share if sum(1 for o in owners.values() if o == h) < share[h])
    before_me = short[: short.index(me)]
    owned = {h: sum(1 for o in owners.values() if o == h) for h in share}
    claimed_before = sum(share[h] - owned[h] for h in before_me)
    available = free[claimed_before:]
    take = available[:wanted]
    if max_step:
        take = take[:max_step]
    return ShareStep(take=tuple(take))
