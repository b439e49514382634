"""Which host runs which application process in a fleet: ``[[apps]]`` with ``processes = N``
is N processes for the whole fleet (each handles the guilds with ``(guild_id >> 22) % N``
equal to its index), spread over the live hosts in name order. A process moves break before
make: the host losing it stops it at once; the host gaining it starts it only once no other
live host says it runs it, so that no guild's events are handled by two processes at once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["AppSlot", "app_slots", "apps_running_elsewhere", "my_apps"]

AppSlot = tuple[str, int, int]  # (module, index, processes)


def app_slots(apps: Iterable[tuple[str, int]]) -> list[AppSlot]:
    """Every process of every ``[[apps]]`` entry ``(module, processes)``, in order."""
    return [(module, index, count) for module, count in apps for index in range(count)]


def my_apps(slots: list[AppSlot], hosts: Iterable[str], me: str) -> set[AppSlot]:
    """The processes ``me`` runs: the k-th process of the fleet goes to the (k mod H)-th
    live host by name."""
    ordered = sorted(set(hosts) | {me})
    return {slot for k, slot in enumerate(slots) if ordered[k % len(ordered)] == me}


def apps_running_elsewhere(live: dict[str, dict[str, Any]], me: str) -> set[AppSlot]:
    """The processes other live hosts said (in their entries) they run."""
    running: set[AppSlot] = set()
    for name, entry in live.items():
        if name == me or not isinstance(entry, dict) or not isinstance(entry.get("apps"), list):
            continue
        for item in entry["apps"][:1024]:
            if (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and type(item[1]) is int
                and type(item[2]) is int
            ):
                running.add((item[0], item[1], item[2]))
    return running
