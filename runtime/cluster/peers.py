"""How the hosts of a fleet reach each other: each publishes, in its entry among the live
hosts, where it takes the other hosts' events (``peer_in``), where it takes commands
(``commands``) and its CURVE public key; every other host reads them from there. What another
host published is outside input: an entry that does not hold a usable endpoint is left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from runtime.bus import PeerAddress

__all__ = ["Peer", "advertised", "peer_info", "read_peers"]

_WILDCARDS = ("0.0.0.0", "*", "::", "[::]", "[*]")
_ENDPOINT = re.compile(r"(ipc:///[^\x00-\x1f]{1,250}|tcp://[A-Za-z0-9.\-:\[\]]{1,253}:\d{1,5})")
_KEY = re.compile(r"[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


@dataclass(frozen=True)
class Peer:
    """Another host: where this host pushes its events, and where it forwards commands."""

    events: PeerAddress
    commands: PeerAddress


def advertised(endpoint: str, advertise_as: str) -> str:
    """``endpoint`` as another host must dial it: a tcp:// endpoint bound to a wildcard
    address gets ``advertise_as`` (a host name or IP) in its place."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    address, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if address in _WILDCARDS:
        shown = f"[{advertise_as}]" if ":" in advertise_as else advertise_as
        return f"tcp://{shown}:{port}"
    return endpoint


def peer_info(peer_in: str, commands: str, public_key: str) -> dict[str, Any]:
    """What this host publishes about itself (``peer_in`` and ``commands`` as advertised;
    ``batches``: its bus takes batched events, docs/wire.md)."""
    return {
        "peer_in": peer_in,
        "commands": commands,
        "curve_public_key": public_key,
        "batches": True,
    }


def read_peers(live: dict[str, dict[str, Any]], me: str) -> dict[str, Peer]:
    """The other live hosts that published usable endpoints, by name."""
    peers: dict[str, Peer] = {}
    for name, entry in live.items():
        if name == me or not isinstance(entry, dict):
            continue
        events, commands = entry.get("peer_in"), entry.get("commands")
        key = entry.get("curve_public_key", "")
        if not (isinstance(events, str) and _ENDPOINT.fullmatch(events)):
            continue
        if not (isinstance(commands, str) and _ENDPOINT.fullmatch(commands)):
            continue
        if not isinstance(key, str) or (key and not _KEY.fullmatch(key)):
            continue
        tcp = [e.startswith("tcp://") for e in (events, commands)]
        if any(tcp) and not key:
            continue  # a tcp:// endpoint without CURVE is never dialled
        peers[name] = Peer(  # a host of an older version gets single events only
            PeerAddress(events, key if tcp[0] else "", batches=entry.get("batches") is True),
            PeerAddress(commands, key if tcp[1] else ""),
        )
    return peers
