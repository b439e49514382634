"""Which shard a command goes to."""

from __future__ import annotations

from typing import Any

import pytest

from ipc.requests import decode_request, request_frames
from runtime.routing import describe_ranges, forward_target, route_command, shard_of_guild

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


def request(type_name: str, body: dict[str, Any], options: dict[str, Any] | None = None) -> Any:
    frames = request_frames(b"1", type_name, body, options)
    decoded = decode_request(frames)
    assert not isinstance(decoded, tuple)
    return decoded


OWNERS = {0: "a", 1: "b", 2: "b", 3: "c"}


def forward(req: Any, served_by: dict[str, str] | None = None, here: bool = False) -> Any:
    return forward_target(req, 4, {0}, OWNERS, "a", served_by or {}, here)


def test_a_request_for_another_hosts_shard_goes_to_that_host() -> None:
    assert shard_of_guild(GUILD, 4) == 2
    members = {"guild_id": str(GUILD), "user_ids": ["1"]}
    target = forward(request("REQUEST_GUILD_MEMBERS", members))
    assert target == ("b", "shard 2 runs on host b", 2)
    # an owner the last turn did not know (a shard on the move) is looked up when forwarded
    unknown = forward_target(request("REQUEST_GUILD_MEMBERS", members), 4, {0}, {}, "a", {}, False)
    assert unknown == ("", "shard 2 runs on host (unknown)", 2)
    voice = forward(request("shardline.voice.play", {"guild_id": str(GUILD), "path": "/x"}))
    assert voice == target
    assert forward(request("REQUEST_GUILD_MEMBERS", members, {"shard": 3}))[0] == "c"
    assert forward(request("shardline.restart", {"shard": 2}))[0] == "b"
    # what this host runs, asks about itself, or cannot route is answered here
    assert forward(request("REQUEST_GUILD_MEMBERS", members, {"shard": 0})) is None  # local
    assert forward(request("shardline.restart", {"rolling": True})) is None
    assert forward(request("shardline.status", {})) is None
    assert forward(request("REQUEST_GUILD_MEMBERS", {"user_ids": ["1"]})) is None
    # a forwarded request is never forwarded again (two hosts that disagree cannot loop)
    assert forward(request("REQUEST_GUILD_MEMBERS", members, {"shard": 3, "via": "c"})) is None


def test_a_custom_command_goes_to_a_host_where_an_application_serves_it() -> None:
    custom = request("mybot.roll", {"sides": 6})
    assert forward(custom, {"mybot.roll": "c"}) == (
        "c",
        "mybot.roll is served by an application on host c",
        None,
    )
    assert forward(custom, {"mybot.roll": "c"}, here=True) is None  # served here: here
    assert forward(custom, {}) is None  # nobody serves it: the desk says so


def test_a_voice_command_goes_where_the_guilds_voice_session_runs() -> None:
    play = request("shardline.voice.play", {"guild_id": str(GUILD), "path": "/x"})
    # the session runs on host c, although the guild's shard (2) is b's
    assert forward_target(play, 4, {0}, OWNERS, "a", {}, False, (), {GUILD: "c"}) == (
        "c",
        f"the voice session of guild {GUILD} runs on host c",
        None,
    )
    assert forward_target(play, 4, {0}, OWNERS, "a", {}, False, {GUILD}, {GUILD: "c"}) is None
    assert forward_target(play, 4, {0}, OWNERS, "a", {}, False, (), {})[0] == "b"  # its shard
