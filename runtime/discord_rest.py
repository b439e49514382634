"""The one REST call the supervisor makes: ``GET /gateway/bot``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

__all__ = ["GatewayBotInfo", "RestError", "fetch_gateway_bot"]


class RestError(RuntimeError):
    """The REST call failed; the message says why and what to check."""


@dataclass(frozen=True)
class GatewayBotInfo:
    url: str
    shards: int
    total: int
    remaining: int
    reset_after_ms: int
    max_concurrency: int


def fetch_gateway_bot(rest_url: str, token: str, timeout: float = 15.0) -> GatewayBotInfo:
    request = urllib.request.Request(
        f"{rest_url.rstrip('/')}/gateway/bot",
        headers={"Authorization": f"Bot {token}", "User-Agent": "DiscordBot (shardline, 0.1)"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise RestError(
                "Discord rejected the token (401 on GET /gateway/bot): check DISCORD_TOKEN"
            ) from None
        raise RestError(f"GET {rest_url}/gateway/bot failed: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RestError(f"GET {rest_url}/gateway/bot failed: {exc}") from None
    try:
        limit = body["session_start_limit"]
        return GatewayBotInfo(
            url=str(body["url"]),
            shards=int(body["shards"]),
            total=int(limit["total"]),
            remaining=int(limit["remaining"]),
            reset_after_ms=int(limit["reset_after"]),
            max_concurrency=int(limit["max_concurrency"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RestError(f"unexpected /gateway/bot answer {body!r}: {exc}") from None
