"""The multi-host fleet: what hosts of one bot share through Redis (docs/cluster.md)."""
