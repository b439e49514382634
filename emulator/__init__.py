"""A local Discord for offline runs, tests and benchmarks: REST, gateway v10 and a control API.

Independent of the rest of shardline (it imports none of runtime/, shards/, voiceworker/, ipc/)
so that it checks our client rather than mirroring it.
"""

from emulator.gateway import GatewayRules, IdentifyRecord, Received, Session
from emulator.server import Emulator, EmulatorConfig
from emulator.world import DEFAULT_TOKEN, World, WorldConfig, make_snowflake, shard_for, token_for

__all__ = [
    "DEFAULT_TOKEN",
    "Emulator",
    "EmulatorConfig",
    "GatewayRules",
    "IdentifyRecord",
    "Received",
    "Session",
    "World",
    "WorldConfig",
    "make_snowflake",
    "shard_for",
    "token_for",
]
