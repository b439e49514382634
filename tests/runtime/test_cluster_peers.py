"""How hosts find each other: what one publishes, and what another accepts of it."""

from __future__ import annotations

from typing import Any

import zmq

from runtime.bus import PeerAddress
from runtime.cluster.peers import Peer, advertised, peer_info, read_peers

KEY = zmq.curve_keypair()[0].decode()


def test_a_wildcard_address_is_advertised_by_name() -> None:
    assert advertised("tcp://0.0.0.0:5557", "gw-1") == "tcp://gw-1:5557"
    assert advertised("tcp://*:5557", "10.0.0.2") == "tcp://10.0.0.2:5557"
    assert advertised("tcp://[::]:5557", "fd00::2") == "tcp://[fd00::2]:5557"
    assert advertised("tcp://10.0.0.1:5557", "gw-1") == "tcp://10.0.0.1:5557"
    assert advertised("ipc:///run/x/peers.sock", "gw-1") == "ipc:///run/x/peers.sock"


def test_usable_entries_become_peers_and_hostile_ones_are_left_out() -> None:
    live: dict[str, Any] = {
        "me": peer_info("tcp://me:1", "tcp://me:2", KEY),
        "tcp": peer_info("tcp://10.0.0.2:5557", "tcp://10.0.0.2:5556", KEY),
        "local": peer_info("ipc:///run/b/peers.sock", "ipc:///run/b/commands.sock", ""),
        "no-key": peer_info("tcp://10.0.0.3:5557", "tcp://10.0.0.3:5556", ""),
        "bad-key": peer_info("tcp://10.0.0.4:5557", "tcp://10.0.0.4:5556", "short"),
        "bad-endpoint": peer_info("http://evil/", "tcp://10.0.0.5:1", KEY),
        "injected": peer_info("tcp://10.0.0.6:1\x00", "tcp://10.0.0.6:2", KEY),
        "old": {"shards": []},  # a host from before peer endpoints
        "older": {  # a host from before batches: it gets single events
            "peer_in": "ipc:///run/c/peers.sock",
            "commands": "ipc:///run/c/commands.sock",
        },
        "junk": "not an object",
    }
    assert read_peers(live, "me") == {
        "tcp": Peer(
            PeerAddress("tcp://10.0.0.2:5557", KEY, batches=True),
            PeerAddress("tcp://10.0.0.2:5556", KEY),
        ),
        "local": Peer(
            PeerAddress("ipc:///run/b/peers.sock", batches=True),
            PeerAddress("ipc:///run/b/commands.sock"),
        ),
        "older": Peer(
            PeerAddress("ipc:///run/c/peers.sock"), PeerAddress("ipc:///run/c/commands.sock")
        ),
    }
