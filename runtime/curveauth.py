"""Who may talk to a supervisor's ``tcp://`` endpoints: CURVE encrypts, ZAP authenticates.

Without ZAP any holder of the server's public key could subscribe to every event and send
``stop``. :class:`ClientAllowList` runs ZeroMQ's ZAP handler (``zmq.auth``) on each context
that binds a CURVE server, and admits only the public keys in ``ipc.client_public_keys`` plus
the supervisor's own local key (written, mode 0600, to ``client.key`` in the private runtime
directory for the CLI, and handed to the ``[[apps]]`` it starts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

__all__ = ["LOCAL_KEY_FILE", "PEER_DOMAIN", "ClientAllowList", "new_keypair", "read_local_key"]

log = logging.getLogger("shardline.supervisor")

LOCAL_KEY_FILE = "client.key"
# The ZAP domain of a fleet host's peer endpoint: only the hosts' own keypair gets in there
# (an application may read events and send commands, never push events as if from a host).
PEER_DOMAIN = "shardline-peers"
_DENIAL_LOG_EVERY = 60.0  # seconds between two log lines about the same refused key


def new_keypair() -> tuple[str, str]:
    """A fresh CURVE keypair as Z85 text: (public, secret)."""
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def read_local_key(runtime_dir: Path) -> str | None:
    """The supervisor's local client secret key, for the CLI on the same host (None when the
    supervisor uses no CURVE endpoint, or the file is not ours alone)."""
    from runtime.rundir import UnsafeRuntimeDirError, check_owned_file

    path = runtime_dir / LOCAL_KEY_FILE
    try:
        if not check_owned_file(path):
            return None
        return path.read_text().strip()[:40] or None
    except (OSError, UnsafeRuntimeDirError):
        return None


class ClientAllowList:
    """ZAP handlers admitting only known client public keys, on one or more contexts."""

    def __init__(
        self, allowed: tuple[str, ...], runtime_dir: Path, peers: tuple[str, ...] = ()
    ) -> None:
        self.local_public, self.local_secret = new_keypair()
        self.allowed = {key.encode() for key in allowed} | {self.local_public.encode()}
        self.peers = {key.encode() for key in peers}  # admitted to PEER_DOMAIN, and only they
        self.runtime_dir = runtime_dir
        self.refused = 0
        self._last_said: dict[bytes, float] = {}
        self._authenticators: list[ThreadAuthenticator] = []

    def start(self, *contexts: zmq.Context[Any]) -> None:
        """Authenticate every CURVE server socket of ``contexts`` (call before binding)."""
        for context in contexts:
            shadow: zmq.Context[Any] = zmq.Context.shadow(context.underlying)
            auth = ThreadAuthenticator(shadow, log=logging.getLogger("shardline.zap"))
            auth.start()
            auth.configure_curve_callback(domain="*", credentials_provider=self)
            auth.configure_curve_callback(domain=PEER_DOMAIN, credentials_provider=self)
            self._authenticators.append(auth)
        path = self.runtime_dir / LOCAL_KEY_FILE
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, self.local_secret.encode())
        finally:
            os.close(fd)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP asks whether the client with Z85 public ``key`` may connect."""
        if domain == PEER_DOMAIN:
            if key in self.peers:
                return True
        elif key in self.allowed:
            return True
        self.refused += 1
        now = time.monotonic()
        if now - self._last_said.get(key, -_DENIAL_LOG_EVERY) >= _DENIAL_LOG_EVERY:
            if len(self._last_said) > 1024:
                self._last_said.clear()
            self._last_said[key] = now
            log.warning(
                f"refused a client whose CURVE public key {key[:40].decode(errors='replace')} "
                + (
                    "is not the fleet's (ipc.curve_public_key) on the peer endpoint"
                    if domain == PEER_DOMAIN
                    else "is not in ipc.client_public_keys"
                ),
                extra={"fields": {"refused": self.refused}},
            )
        return False

    def stop(self) -> None:
        for auth in self._authenticators:
            auth.stop()
        self._authenticators.clear()
        with contextlib.suppress(OSError):
            (self.runtime_dir / LOCAL_KEY_FILE).unlink()
