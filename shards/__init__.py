"""The gateway shard process: one connection, one loop (see shards/loop.py)."""
