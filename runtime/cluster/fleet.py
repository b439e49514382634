"""Joining a fleet: reach its Redis (errors say what is wrong, never the password) and claim
the fleet's name for this bot's token, so that two bots given the same name are refused
instead of merged."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from runtime.cluster.identify import ClusterUnavailable
from runtime.cluster.keys import FleetKeys
from runtime.config import ClusterConfig, redact_url

__all__ = ["FleetClaimError", "claim_fleet", "connect", "token_digest"]

TIMEOUT = 3.0  # seconds for a connection or a reply: a stalled Redis must not stall the loop


class FleetClaimError(Exception):
    """The fleet's name belongs to another bot (another token): refused, nothing written."""


def token_digest(token: str, fleet: str) -> str:
    """What Redis keeps of the token: a salted digest that cannot be turned back into it."""
    return hashlib.sha256(f"shardline-fleet:{fleet}:{token}".encode()).hexdigest()


async def connect(config: ClusterConfig) -> Any:
    """A ``redis.asyncio.Redis`` for ``cluster.redis_url``, checked with a PING.
    ClusterUnavailable names the (redacted) URL and the cause."""
    url = os.path.expandvars(config.redis_url)  # ${REDIS_PASSWORD}: kept out of the file
    where = redact_url(url)
    tls: dict[str, Any] = {}
    if url.startswith("rediss://") and config.redis_ca_file:
        ca_file = os.path.expanduser(config.redis_ca_file)
        if not os.path.isfile(ca_file):
            raise ClusterUnavailable(
                f"cluster.redis_ca_file {config.redis_ca_file!r} is not a readable file"
            )
        tls["ssl_ca_certs"] = ca_file
    try:
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT, **tls
        )
    except ValueError as exc:
        raise ClusterUnavailable(f"cluster.redis_url {where!r} is not usable: {exc}") from None
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        if _refused_auth(exc):
            raise ClusterUnavailable(
                f"Redis at {where} refused the password ({exc}): check cluster.redis_url"
            ) from None
        raise ClusterUnavailable(f"cannot reach Redis at {where}: {exc}") from None
    return client


def _refused_auth(exc: BaseException) -> bool:
    """redis-py reports a wrong password as a ConnectionError carrying Redis's WRONGPASS
    text (or NOAUTH when none was given)."""
    text = str(exc)
    return isinstance(exc, AuthenticationError) or any(
        marker in text for marker in ("WRONGPASS", "username-password", "NOAUTH", "AUTH")
    )


async def claim_fleet(client: Any, keys: FleetKeys, token: str) -> None:
    """Bind ``keys.fleet`` to this token on first use; FleetClaimError if another token
    holds it."""
    digest = token_digest(token, keys.fleet)
    try:
        await client.set(keys.owner_token, digest, nx=True)
        held = await client.get(keys.owner_token)
    except ResponseError as exc:
        raise ClusterUnavailable(f"Redis refused the fleet's claim: {exc}") from None
    except RedisError as exc:
        raise ClusterUnavailable(f"Redis is unreachable: {exc}") from None
    if held is None or held.decode() != digest:
        raise FleetClaimError(
            f"the fleet name {keys.fleet!r} (cluster.fleet) is used in this Redis by another "
            "bot token; give this bot its own fleet name (nothing was written)"
        )
