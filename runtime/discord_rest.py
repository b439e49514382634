"""The one REST call the supervisor makes: ``GET /gateway/bot``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from ipc.control import gateway_url_problem

__all__ = ["GatewayBotInfo", "RestError", "fetch_gateway_bot", "parse_gateway_bot"]


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
    return parse_gateway_bot(body)


def parse_gateway_bot(body: object) -> GatewayBotInfo:
    """Check ``GET /gateway/bot``'s answer field by field: the shard count sizes the fleet and
    the token is sent to the URL, so nothing in it is taken on trust."""
    if not isinstance(body, dict) or not isinstance(body.get("session_start_limit"), dict):
        raise RestError(f"unexpected /gateway/bot answer {_cut(body)}: not the documented object")
    limit = body["session_start_limit"]
    problem = gateway_url_problem(body.get("url"))
    if problem is not None:
        raise RestError(f"/gateway/bot answered a url that {problem}: {_cut(body.get('url'))}")
    fields = {
        "shards": (body.get("shards"), 1, 1_000_000),
        "session_start_limit.total": (limit.get("total"), 0, 10_000_000),
        "session_start_limit.remaining": (limit.get("remaining"), 0, 10_000_000),
        "session_start_limit.reset_after": (limit.get("reset_after"), 0, 10 * 86_400_000),
        "session_start_limit.max_concurrency": (limit.get("max_concurrency"), 1, 100_000),
    }
    for name, (value, lo, hi) in fields.items():
        if type(value) is not int or not lo <= value <= hi:
            raise RestError(
                f"/gateway/bot answered {name} = {_cut(value)}: expected an integer "
                f"from {lo} to {hi}"
            )
    return GatewayBotInfo(
        url=body["url"],
        shards=body["shards"],
        total=limit["total"],
        remaining=limit["remaining"],
        reset_after_ms=limit["reset_after"],
        max_concurrency=limit["max_concurrency"],
    )


def _cut(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
