"""Property tests: what applications and peers send (commands, bus messages, gateway
payloads) decoded and checked without any error but the documented ones."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc.codec import CodecError, decode_bus, decode_gateway_event
from ipc.control import gateway_url_problem
from ipc.fields import InvalidFieldError
from ipc.messages import REGISTRY, GatewayCommand
from tests.shards.test_protocol_properties import json_values

COMMANDS = [
    cls
    for name in REGISTRY.names("command")
    if (cls := REGISTRY.command(name)) is not None and issubclass(cls, GatewayCommand)
]
command_bodies = json_values | st.fixed_dictionaries(
    {},
    optional={
        "guild_id": json_values | st.sampled_from(["1", "0", "abc", str(2**64)]),
        "channel_id": json_values,
        "status": json_values | st.sampled_from(["online", "idle"]),
        "activities": json_values
        | st.lists(st.fixed_dictionaries({"name": json_values, "type": json_values})),
        "since": json_values,
        "afk": json_values,
        "query": json_values,
        "user_ids": json_values,
        "limit": json_values,
        "nonce": json_values,
        "guild_ids": json_values,
        "self_mute": json_values,
        "self_deaf": json_values,
    },
)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(COMMANDS), command_bodies)
def test_command_checks_raise_only_invalid_field_errors(
    cls: type[GatewayCommand], body: Any
) -> None:
    command = cls.from_raw(body)
    try:
        command.validate()
    except InvalidFieldError as exc:
        assert isinstance(exc.field, str) and len(str(exc)) < 400
        return
    orjson.dumps(command.to_payload())  # a command that passes can be encoded


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=4) | st.just([b"MESSAGE_CREATE x", b"{}", b"{}"]))
def test_bus_decoding_raises_only_codec_errors(frames: list[bytes]) -> None:
    try:
        decode_bus(frames)
    except CodecError:
        pass


@settings(max_examples=500, deadline=None)
@given(
    st.builds(
        lambda op, t, d: orjson.dumps({"op": op, "t": t, "d": d}),
        json_values,
        json_values | st.sampled_from(["READY", "MESSAGE_CREATE", "GUILD_CREATE"]),
        json_values,
    )
    | st.binary(max_size=40)
)
def test_gateway_decoding_raises_only_codec_errors(data: bytes) -> None:
    try:
        decode_gateway_event(data)
    except CodecError:
        pass


@settings(max_examples=500, deadline=None)
@given(json_values | st.text(max_size=80).map(lambda s: "wss://" + s))
def test_the_url_check_never_raises(url: Any) -> None:
    problem = gateway_url_problem(url)
    assert problem is None or isinstance(problem, str)
