"""The supervisor's command desk, without sockets or processes: frames in, frames out."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ipc.commands import UpdatePresence
from ipc.fields import string
from ipc.messages import Accepted, ErrorCode, GatewayCommand, Reply, Routed
from ipc.requests import (
    CALL,
    CommandResult,
    GetStatus,
    Request,
    ServeCommands,
    StatusReply,
    StopFleet,
    encode_request,
)
from runtime.commands import CALL_TIMEOUT, SERVER_TTL, CommandDesk, Options


class Greet(Request):
    __slots__ = ()
    type_name = "test.desk.greet"
    name = string()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[CommandDesk, Clock, list[object]]:
    clock = Clock()
    desk = CommandDesk(clock)
    seen: list[object] = []

    async def status(command: GetStatus, options: Options) -> Reply:
        seen.append(command)
        return StatusReply(status={"shards": []})

    async def gateway(command: GatewayCommand, options: Options) -> Reply:
        seen.append((command, options))
        return Routed(routed="shard:0")

    async def broken(command: StopFleet, options: Options) -> Reply:
        raise RuntimeError("a bug")

    desk.handle(GetStatus, status)
    desk.handle(GatewayCommand, gateway)
    desk.handle(StopFleet, broken)
    return desk, clock, seen


def receive(desk: CommandDesk, identity: bytes, frames: list[bytes]) -> list[list[bytes]]:
    return asyncio.run(desk.receive([identity, *frames]))


def answer(out: list[list[bytes]]) -> dict[str, object]:
    assert len(out) == 1
    return dict(orjson.loads(out[0][2]))


def test_a_command_goes_to_the_handler_of_its_class() -> None:
    desk, _, seen = make()
    out = receive(desk, b"app", encode_request(b"1", GetStatus()))
    assert out[0][:2] == [b"app", b"1"]
    assert answer(out) == {"ok": True, "reply": "shardline.reply.status", "status": {"shards": []}}
    assert seen == [GetStatus.from_raw({})]


def test_a_subclass_without_its_own_handler_uses_its_parents() -> None:
    desk, _, seen = make()
    presence = UpdatePresence("idle")
    out = receive(desk, b"app", encode_request(b"2", presence, {"shard": 0}))
    assert answer(out)["routed"] == "shard:0"
    assert seen == [(presence, {"shard": 0})]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"1"], ErrorCode.MALFORMED),
        ([b"1", b"shardline.status"], ErrorCode.MALFORMED),
        ([b"1", b"shardline.status", b"{", b"{}"], ErrorCode.MALFORMED),
        ([b"1", b"shardline.status", b"{}", b"[1]"], ErrorCode.MALFORMED),
        ([b"1", b"no.such.command", b"{}"], ErrorCode.UNKNOWN_COMMAND),
        ([b"1", b"x" * 500, b"{}"], ErrorCode.UNKNOWN_COMMAND),
        ([b"1", b"IDENTIFY", b"{}"], ErrorCode.UNKNOWN_COMMAND),  # not an app's to send
        ([b"1", b"UPDATE_PRESENCE", b'{"status": "sleepy"}'], ErrorCode.INVALID),
        ([b"1", b"shardline.status", b'{"extra": 1}'], ErrorCode.INVALID),
        ([b"1", b"shardline.stop", b"{}"], ErrorCode.INTERNAL),  # the handler raised
        ([b"1", b"shardline.restart", b'{"rolling": true}'], ErrorCode.UNKNOWN_COMMAND),
    ],
)
def test_every_bad_request_gets_one_typed_error(frames: list[bytes], code: ErrorCode) -> None:
    desk, _, seen = make()
    reply = answer(receive(desk, b"app", frames))
    assert (reply["ok"], reply["code"], reply["reply"]) == (False, code, "shardline.reply.error")
    assert isinstance(reply["error"], str) and len(reply["error"]) < 300
    assert seen == []


def serve(desk: CommandDesk, identity: bytes, *types: str) -> dict[str, object]:
    return answer(receive(desk, identity, encode_request(b"s", ServeCommands(types=list(types)))))


def test_a_served_command_is_called_on_the_app_and_its_answer_relayed() -> None:
    desk, _, _ = make()
    assert serve(desk, b"server", Greet.type_name)["ok"]
    out = receive(desk, b"asker", encode_request(b"7", Greet(name="ada"), {"shard": 1}))
    assert len(out) == 1 and out[0][:2] == [b"server", CALL]
    call_id = out[0][2]
    assert out[0][3:] == [b"test.desk.greet", b'{"name":"ada"}', b'{"shard":1}']
    result = CommandResult(call=call_id.decode(), reply={"ok": True, "reply": "x.hi", "n": 1})
    out = receive(desk, b"server", encode_request(b"r", result))
    assert out[0][:2] == [b"server", b"r"] and orjson.loads(out[0][2])["ok"]  # receipt
    assert out[1] == [b"asker", b"7", orjson.dumps({"ok": True, "reply": "x.hi", "n": 1})]
    # a second answer to the same call goes nowhere
    assert len(receive(desk, b"server", encode_request(b"r", result))) == 1


def test_an_unanswered_call_times_out_with_an_error() -> None:
    desk, clock, _ = make()
    serve(desk, b"server", Greet.type_name)
    receive(desk, b"asker", encode_request(b"8", Greet(name="x")))
    assert desk.expire() == []
    clock.now += CALL_TIMEOUT
    (out,) = desk.expire()
    assert out[:2] == [b"asker", b"8"] and orjson.loads(out[2])["code"] == "timeout"


def test_a_server_that_stops_renewing_is_forgotten() -> None:
    desk, clock, _ = make()
    serve(desk, b"server", Greet.type_name)
    clock.now += SERVER_TTL
    reply = answer(receive(desk, b"asker", encode_request(b"9", Greet(name="x"))))
    assert reply["code"] == "unknown_command"


def test_an_app_cannot_take_over_shardlines_own_commands() -> None:
    desk, _, _ = make()
    reply = serve(desk, b"thief", "shardline.status")
    assert (reply["ok"], reply["code"]) == (False, "invalid")
    out = receive(desk, b"app", encode_request(b"1", GetStatus()))
    assert answer(out)["reply"] == "shardline.reply.status"
    assert serve(desk, b"x", "shardline.serve")["ok"] is False


def test_a_bad_result_is_refused_and_relays_nothing() -> None:
    desk, _, _ = make()
    out = receive(desk, b"server", [b"r", b"shardline.result", b'{"call": "1", "reply": 5}'])
    assert len(out) == 1 and answer(out)["code"] == "invalid"


def test_replies_decode_to_their_declared_classes() -> None:
    assert isinstance(Reply.decode(Accepted().encode()), Accepted)
    routed = Reply.decode(Routed(routed="shard:3").encode(), Routed)
    assert isinstance(routed, Routed) and routed.routed == "shard:3"
    with pytest.raises(ValueError, match="not a reply"):
        Reply.decode(b'{"routed": 1}')
