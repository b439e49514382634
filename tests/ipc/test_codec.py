"""The registry and codec: typed decoding, unknowns kept whole, custom classes, bus frames."""

from __future__ import annotations

import orjson
import pytest

import ipc
from ipc import events
from ipc.codec import (
    MAX_BATCH,
    CodecError,
    Envelope,
    UnknownMessageError,
    batch_count,
    batch_topics,
    decode_bus,
    decode_command,
    decode_gateway,
    decode_gateway_event,
    encode_bus_dispatch,
    encode_bus_event,
    encode_command,
    encode_gateway_command,
    pack_batch,
    topic_for,
    unpack_batch,
)
from ipc.commands import Heartbeat, Identify, RequestGuildMembers, UpdatePresence, UpdateVoiceState
from ipc.errors import DecodeError, ErrorEvent, FatalClose
from ipc.fields import MissingFieldError
from ipc.handlers import HandlerTable
from ipc.messages import REGISTRY, DispatchEvent, RegistryConflictError, UnknownDispatch
from tests.ipc import custom_events

USER = {"id": "80351110224678912", "username": "nelly", "discriminator": "0", "avatar": None}
MESSAGE = {
    "id": "1234567890123456789",
    "channel_id": "41771983423143937",
    "guild_id": "197038439483310086",
    "author": USER,
    "member": {"roles": ["41771983423143936"], "joined_at": "2015-04-26T06:26:56.936000+00:00"},
    "content": "hello",
    "timestamp": "2017-07-11T17:27:07.299000+00:00",
    "mentions": [USER],
    "mention_roles": [],
    "attachments": [],
    "embeds": [],
    "tts": False,
    "pinned": False,
    "type": 0,
    "an_unmodelled_field": {"kept": True},
}


def payload(op: int, d: object, s: int | None = None, t: str | None = None) -> bytes:
    return orjson.dumps({"op": op, "d": d, "s": s, "t": t})


def test_every_required_class_is_registered_by_op_and_type() -> None:
    dispatches = [
        "READY",
        "RESUMED",
        "GUILD_CREATE",
        "GUILD_UPDATE",
        "GUILD_DELETE",
        "MESSAGE_CREATE",
        "MESSAGE_UPDATE",
        "MESSAGE_DELETE",
        "INTERACTION_CREATE",
        "VOICE_STATE_UPDATE",
        "VOICE_SERVER_UPDATE",
        "GUILD_MEMBER_ADD",
        "GUILD_MEMBER_UPDATE",
        "GUILD_MEMBER_REMOVE",
        "GUILD_MEMBERS_CHUNK",
        "CHANNEL_CREATE",
        "CHANNEL_UPDATE",
        "CHANNEL_DELETE",
        "PRESENCE_UPDATE",
        "TYPING_START",
    ]
    for t in dispatches:
        cls = REGISTRY.gateway_event(0, t)
        assert cls is not None and cls.type_name == t and cls.op == 0, t
    for op, name in [
        (10, "HELLO"),
        (11, "HEARTBEAT_ACK"),
        (7, "RECONNECT"),
        (9, "INVALID_SESSION"),
        (1, "HEARTBEAT"),
    ]:
        cls = REGISTRY.gateway_event(op, None)
        assert cls is not None and cls.type_name == name
    for name in [
        "IDENTIFY",
        "RESUME",
        "HEARTBEAT",
        "REQUEST_GUILD_MEMBERS",
        "UPDATE_VOICE_STATE",
        "UPDATE_PRESENCE",
    ]:
        assert REGISTRY.command(name) is not None, name


def test_message_create_decodes_typed_with_snowflakes_as_ints() -> None:
    event = decode_gateway_event(payload(0, MESSAGE, 5, "MESSAGE_CREATE"))
    assert isinstance(event, custom_events.RichMessageCreate)  # the test module took it over
    assert isinstance(event, events.MessageCreate)
    assert event.id == 1234567890123456789 and event.guild_id == 197038439483310086
    assert event.author.id == 80351110224678912 and event.author.username == "nelly"
    assert event.member is not None and event.member.roles == [41771983423143936]
    assert event.mentions[0].id == 80351110224678912
    assert event.raw["an_unmodelled_field"] == {"kept": True}  # nothing dropped
    assert event.edited_timestamp is None


def test_connection_payloads() -> None:
    hello = decode_gateway_event(payload(10, {"heartbeat_interval": 41250}))
    assert isinstance(hello, events.Hello) and hello.heartbeat_interval == 41250
    invalid = decode_gateway_event(payload(9, True))
    assert isinstance(invalid, events.InvalidSession) and invalid.resumable is True
    assert isinstance(decode_gateway_event(payload(11, None)), events.HeartbeatAck)
    assert isinstance(decode_gateway_event(payload(7, None)), events.Reconnect)
    assert isinstance(decode_gateway_event(payload(1, None)), events.HeartbeatRequest)


def test_unknown_dispatch_and_op_keep_their_data() -> None:
    unknown = decode_gateway_event(payload(0, {"x": 1}, 3, "SOMETHING_NEW"))
    assert isinstance(unknown, UnknownDispatch) and isinstance(unknown, DispatchEvent)
    assert unknown.event_type == "SOMETHING_NEW" and unknown.raw == {"x": 1}
    other = decode_gateway_event(payload(42, [1, 2]))
    assert isinstance(other, ipc.UnknownGatewayEvent) and other.unknown_op == 42
    assert other.raw == [1, 2]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"{oops", "not valid JSON"),
        (b"[1,2]", "not an object"),
        (b'{"d": 1}', "no integer 'op'"),
        (b'{"op": 0, "d": {}, "s": 1}', "without an event type"),
    ],
)
def test_bad_payloads_raise_codec_errors_that_say_why(data: bytes, why: str) -> None:
    with pytest.raises(CodecError, match=why):
        decode_gateway(data)


def test_missing_required_field_names_class_and_key() -> None:
    event = decode_gateway_event(payload(0, {"channel_id": "1"}, 1, "MESSAGE_DELETE"))
    with pytest.raises(MissingFieldError, match=r"MessageDelete.*'id'"):
        _ = event.id  # type: ignore[attr-defined]


def test_custom_dispatch_declared_outside_the_package_round_trips() -> None:
    body = {"guild_id": "5", "rule_id": "6", "matched_keyword": "spam", "extra": 1}
    raw = payload(0, body, 9, "AUTO_MODERATION_ACTION_EXECUTION")
    event = decode_gateway_event(raw)
    assert isinstance(event, custom_events.AutoModerationActionExecution)
    assert (event.guild_id, event.rule_id, event.matched_keyword) == (5, 6, "spam")
    frames = encode_bus_dispatch(event.type_name, raw, "shard:0", "sess", 9, 123)
    assert frames[2] is raw  # the body is the gateway payload, not re-encoded
    envelope, again = decode_bus(frames)
    assert isinstance(again, custom_events.AutoModerationActionExecution)
    assert again.raw == body and envelope == Envelope("shard:0", "dispatch", "sess", 9, 123)


def test_custom_event_and_command_round_trip_between_processes() -> None:
    event = custom_events.LevelUp(user_id=42, level=7)
    assert event.raw == {"user_id": "42", "level": 7}  # snowflakes are strings on the wire
    envelope, decoded = decode_bus(encode_bus_event(event, "app:1", 5))
    assert decoded == event and envelope.source == "app:1" and envelope.kind == "event"
    command = custom_events.Ban(guild_id=1, user_id=2, reason="spam")
    assert decode_command(encode_command(command)) == command


def test_gateway_commands_encode_to_discord_payloads() -> None:
    identify = Identify(
        token="t", properties={"os": "linux"}, intents=513, shard=[1, 4], large_threshold=250
    )
    assert orjson.loads(encode_gateway_command(identify)) == {
        "op": 2,
        "d": {
            "token": "t",
            "properties": {"os": "linux"},
            "intents": 513,
            "shard": [1, 4],
            "large_threshold": 250,
        },
    }
    assert "'t'" not in repr(identify) and "token=<redacted>" in repr(identify)
    assert orjson.loads(encode_gateway_command(Heartbeat(7))) == {"op": 1, "d": 7}
    voice = orjson.loads(encode_gateway_command(UpdateVoiceState(10, None, self_deaf=True)))
    assert voice == {
        "op": 4,
        "d": {"guild_id": "10", "channel_id": None, "self_mute": False, "self_deaf": True},
    }
    members = RequestGuildMembers(guild_id=3, user_ids=[4, 5], nonce="n")
    assert orjson.loads(encode_gateway_command(members))["d"]["user_ids"] == ["4", "5"]
    presence = UpdatePresence("idle", [{"name": "x", "type": 0}])
    assert decode_command(encode_command(presence)) == presence


def test_decode_command_rejects_unknown_names() -> None:
    with pytest.raises(UnknownMessageError, match="nope"):
        decode_command([b"nope", b"{}"])


def test_redeclaring_a_name_without_subclassing_is_refused() -> None:
    with pytest.raises(RegistryConflictError, match="MESSAGE_CREATE"):

        class Clash(DispatchEvent):
            __slots__ = ()
            type_name = "MESSAGE_CREATE"


def test_structs_are_read_only() -> None:
    event = custom_events.LevelUp(user_id=1, level=2)
    with pytest.raises(AttributeError, match="read-only"):
        event.level = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field 'levl'"):
        custom_events.LevelUp(levl=3)


def test_error_events_have_one_catch_all_handler() -> None:
    table = HandlerTable()
    caught: list[ErrorEvent] = []
    fatal: list[FatalClose] = []
    table.add(ErrorEvent, caught.append)
    table.add(FatalClose, fatal.append)
    errors = [
        DecodeError(message="bad zlib"),
        FatalClose(message="closed", code=4004, advice="check the token"),
    ]
    for err in errors:
        for handler in table.handlers_for(err):
            handler(err)
    assert caught == errors and fatal == [errors[1]]
    assert not table.handlers_for(events.Resumed.from_raw(None))
    _, decoded = decode_bus(encode_bus_event(errors[1], "shard:2"))
    assert isinstance(decoded, FatalClose) and decoded.code == 4004


def test_topics_allow_prefix_subscription_by_type() -> None:
    assert topic_for("MESSAGE_CREATE", "shard:3") == b"MESSAGE_CREATE shard:3"
    assert topic_for("MESSAGE_CREATE", "shard:3").startswith(b"MESSAGE_CREATE ")
    assert not topic_for("MESSAGE_CREATE_X", "shard:3").startswith(b"MESSAGE_CREATE ")


def test_bad_bus_messages_raise_codec_errors() -> None:
    with pytest.raises(CodecError, match="frames"):
        decode_bus([b"a", b"b"])
    with pytest.raises(CodecError, match="envelope"):
        decode_bus([b"X shard:0", b"not json", b"{}"])


def test_a_batch_holds_its_messages_whole_and_in_order() -> None:
    messages = [
        [b"MESSAGE_CREATE shard:0", b'{"seq":1}', b'{"op":0,"d":{"content":"\xc3\xa9"}}'],
        [b"TYPING_START shard:0", b'{"seq":2}', b""],  # an empty frame is a frame
        [b"shardline.duplicate", b"{}", b"x" * 70_000],
    ]
    packed = pack_batch([frame for message in messages for frame in message])
    assert unpack_batch(packed) == messages
    assert batch_count(packed) == 3
    assert batch_topics(packed) == [m[0] for m in messages]


@pytest.mark.parametrize(
    ("packed", "why"),
    [
        (b"", "no count"),
        (b"\x00\x00\x00\x00", "cannot hold"),  # none
        ((MAX_BATCH + 1).to_bytes(4, "little"), "cannot hold"),
        ((1000).to_bytes(4, "little") + b"\x00" * 100, "cannot hold"),  # lengths cut off
        (pack_batch([b"t", b"e", b"body"])[:-1], "do not add up"),  # truncated
        (pack_batch([b"t", b"e", b"body"]) + b"!", "do not add up"),  # a byte too many
        (b"\x01\x00\x00\x00" + b"\xff" * 12, "do not add up"),  # lengths past the end
    ],
)
def test_a_broken_batch_raises_a_codec_error_that_says_why(packed: bytes, why: str) -> None:
    with pytest.raises(CodecError, match=why):
        unpack_batch(packed)
    with pytest.raises(CodecError, match=why):
        batch_count(packed)


def test_a_fresh_process_decodes_without_importing_the_event_modules() -> None:
    """ipc loads its classes on first use: a program that imports only the codec still gets
    typed events (this once decoded READY as UnknownDispatch)."""
    import subprocess
    import sys

    code = (
        "from ipc.codec import decode_gateway_event, decode_command;"
        'e = decode_gateway_event(b\'{"t":"READY","s":1,"op":0,"d":{}}\');'
        "c = decode_command([b'UPDATE_PRESENCE', b'{}']);"
        "print(type(e).__name__, type(c).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Ready", "UpdatePresence"]
