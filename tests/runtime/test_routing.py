"""Which shard a command goes to."""

from __future__ import annotations

import pytest

from runtime.routing import describe_ranges, route_command, shard_of_guild

GUILD = 81384788765712384  # (GUILD >> 22) % 4 == shard_of_guild(GUILD, 4)


def test_discords_rule() -> None:
    assert shard_of_guild(GUILD, 1) == 0
    assert shard_of_guild(GUILD, 4) == (GUILD >> 22) % 4


@pytest.mark.parametrize(
    ("options", "body", "expected"),
    [
        ({"shard": 2}, {"guild_id": str(GUILD)}, 2),  # options.shard wins
        ({"guild_id": str(GUILD)}, {}, shard_of_guild(GUILD, 4)),
        ({"guild_id": GUILD}, {}, shard_of_guild(GUILD, 4)),  # a number works too
        ({}, {"guild_id": str(GUILD)}, shard_of_guild(GUILD, 4)),  # the command's own
        ({"guild_id": str(GUILD)}, {"guild_id": "1"}, shard_of_guild(GUILD, 4)),
    ],
)
def test_routes(options: dict[str, object], body: object, expected: int) -> None:
    assert route_command(options, body, 4, {0, 1, 2, 3}) == expected


@pytest.mark.parametrize(
    ("options", "body", "words"),
    [
        ({"shard": "2"}, {}, "options.shard must be a shard id"),
        ({}, {}, "needs a guild_id"),
        ({}, [1, 2], "needs a guild_id"),
        ({"guild_id": "abc"}, {}, "guild_id must be a snowflake"),
        ({"shard": 3}, {}, "shard 3 is not run by this host (it runs 0-2)"),
    ],
)
def test_no_route_says_why(options: dict[str, object], body: object, words: str) -> None:
    problem = route_command(options, body, 4, {0, 1, 2})
    assert isinstance(problem, str) and words in problem


def test_ranges_are_described_compactly() -> None:
    assert describe_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert describe_ranges([]) == "none"
