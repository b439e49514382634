"""How a worker process (shard or voice) ends: its exit status is a contract with the
supervisor, which decides from it whether to respawn."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitStatus"]


class ExitStatus(IntEnum):
    STOPPED = 0  # asked to stop (SIGTERM, a shutdown), or a voice session that left
    CRASH = 1  # anything unexpected: respawn with backoff
    USAGE = 2  # the command line or environment was refused: a respawn would fail the same
    FATAL = 3  # a fatal close code (bad token, disallowed intents): do not respawn
