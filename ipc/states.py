"""The state vocabularies that cross process boundaries: what a shard or a voice session
reports, what ``shardline status`` shows, and how a voice session ended. The values are the
strings on the wire (``docs/wire.md``); code compares members, never strings."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ShardState", "VoiceOutcome", "VoiceState", "WorkerKind"]


class WorkerKind(StrEnum):
    SHARD = "shard"
    VOICE = "voice"


class ShardState(StrEnum):
    # The shard process's own states (shards.protocol moves between these).
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"  # socket opening, or open and waiting for HELLO
    IDENTIFYING = "identifying"  # waiting for a permit, or for READY
    RESUMING = "resuming"  # RESUME sent, waiting for RESUMED
    READY = "ready"
    BACKING_OFF = "backing off"
    FATAL = "fatal"
    STOPPED = "stopped"
    # What the supervisor adds about the process around them.
    STARTING = "starting"  # spawned, no status yet
    RESTARTING = "restarting"  # exited, a respawn is due


class VoiceState(StrEnum):
    # The voice process's own states (voiceworker.gateway moves between these).
    CONNECTING = "connecting"
    IDENTIFYING = "identifying"
    DISCOVERING = "discovering"  # READY received: UDP IP discovery under way
    SELECTING = "selecting"  # SELECT PROTOCOL sent, waiting for the session description
    CONNECTED = "connected"
    RESUMING = "resuming"
    BACKING_OFF = "backing off"
    REJOIN = "rejoin"  # the session is gone: the supervisor must send op 4 again
    WAITING_SERVER = "waiting for server"  # 4014: a new VOICE_SERVER_UPDATE may come
    DISCONNECTED = "disconnected"
    # What the supervisor adds about the session around them.
    JOINING = "joining"  # op 4 sent, waiting for Discord's voice state and server
    REJOINING = "rejoining"  # the process ended; a new op 4 is due
    LEAVING = "leaving"
    FAILED = "failed"  # over for good; status says why


class VoiceOutcome(StrEnum):
    """What a voice close calls for (the close-code table's verdict)."""

    RESUME = "resume"
    REJOIN = "rejoin"
    WAIT_SERVER = "wait for a new server"
    STOP = "stop"
    REIDENTIFY = "identify again"  # UDP went silent: a new connection, discovery and key
