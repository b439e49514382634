"""From a config and a token to a :class:`FleetPlan`: ask Discord what it recommends and
allows (``GET /gateway/bot``), and decide which shards this host runs."""

from __future__ import annotations

import ssl

from conn.tls import client_context
from runtime.config import Config, ConfigError
from runtime.discord_rest import fetch_gateway_bot
from runtime.reshard import round_up, shard_multiple
from runtime.supervisor import FleetPlan, StartupError

__all__ = ["plan_fleet"]


def plan_fleet(config: Config, token: str) -> FleetPlan:
    """Raises StartupError (saying what to fix) when the fleet cannot start as configured,
    ConfigError when a config value is the cause."""
    check_ca_file(config.discord.ca_file)
    info = fetch_gateway_bot(config.discord.rest_url, token)
    multiple = shard_multiple(config.shards.multiple_of, info.max_concurrency)
    count = config.shards.count or round_up(info.shards, multiple)
    if count % multiple:
        raise StartupError(
            f"shards.count = {count} is not a multiple of {multiple}: a bot in large-bot "
            f"sharding (max_concurrency {info.max_concurrency}) must run a multiple, or "
            "Discord closes every shard with 4010. Use shards.count = "
            f'{round_up(count, multiple)} (or "auto"), or set shards.multiple_of'
        )
    ids = config.shards.ids if config.shards.ids is not None else tuple(range(count))
    outside = [i for i in ids if i >= count]
    if outside:
        raise StartupError(
            f"shards.ids asks for shard {outside[0]}, but the bot has {count} shards "
            "(shards.count or Discord's recommendation)"
        )
    return FleetPlan(
        gateway_url=config.discord.gateway_url or info.url,
        shard_count=count,
        shard_ids=tuple(ids),
        max_concurrency=info.max_concurrency,
        remaining=info.remaining,
        reset_after_ms=info.reset_after_ms,
    )


def check_ca_file(ca_file: str) -> None:
    """Every worker would load ``discord.ca_file`` and exit on it (status 2): say so once,
    before anything starts, instead."""
    if not ca_file:
        return
    try:
        client_context(ca_file)  # what each worker will build from it
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "discord.ca_file",
            ca_file,
            f"a readable PEM CA bundle, or empty ({exc})",
        ) from None
