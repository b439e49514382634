"""The DAVE driver without sockets: it answers the emulator's DAVE call (external sender,
proposals, commits, welcomes, transitions) with the messages a client sends, buffers binary
messages that come before the session description, reports unusable commits, and follows
downgrades to protocol version 0."""

from __future__ import annotations

import orjson

from emulator.dave import DaveCall, EmulatedMember, Outbound
from emulator.mls import ExternalSender
from voiceworker.dave import DaveDriver
from voiceworker.gateway import SendBinary, SendText, VoiceAction

BOT, MEMBER, CHANNEL = 20, 4242, 1_180_000_000_000_000_777
OPUS = b"\xfc" + bytes(range(40))


class Call:
    """The emulator's call with one emulated member and our driver wired to it."""

    def __init__(self) -> None:
        self.call = DaveCall(CHANNEL, ExternalSender())
        self.member = EmulatedMember(MEMBER, CHANNEL)
        self.driver = DaveDriver(BOT, CHANNEL)
        self.sent: list[int] = []  # ops the driver sent

    def from_driver(self, actions: list[VoiceAction]) -> list[Outbound]:
        out: list[Outbound] = []
        for action in actions:
            if isinstance(action, SendBinary):
                op, payload = action.data[0], action.data[1:]
                self.sent.append(op)
                out += self._in(BOT, op, payload)
            elif isinstance(action, SendText):
                message = orjson.loads(action.data)
                self.sent.append(message["op"])
                out += self._in(BOT, message["op"], message["d"])
        return out

    def _in(self, user: int, op: int, payload: object) -> list[Outbound]:
        c = self.call
        if op == 26:
            return c.key_package(user, payload)  # type: ignore[arg-type]
        if op == 28:
            return c.commit(user, payload)  # type: ignore[arg-type]
        if op == 23:
            return c.ready(user, payload["transition_id"])  # type: ignore[index]
        if op == 31:
            return c.invalid(user, payload["transition_id"])  # type: ignore[index]
        return []

    def run(self, out: list[Outbound]) -> None:
        while out:
            m = out.pop(0)
            if m.user_id == MEMBER:
                for op, payload in self.member.receive(m.op, m.payload):
                    out += self._in(MEMBER, op, payload)
            else:
                out += self.from_driver(self.driver.receive(m.op, m.payload))


def test_early_binary_messages_wait_for_the_session_description() -> None:
    c = Call()
    c.run(c.call.join(MEMBER))
    c.driver.receive(11, {"user_ids": [str(MEMBER)]})
    early = c.call.join(BOT)  # op 25 arrives before the session description
    c.run(early)
    assert c.driver.session is None and c.sent == []
    c.run(c.from_driver(c.driver.start(1)))  # key package, then the buffered external sender
    assert c.sent[0] == 26 and c.driver.active and c.member.ready
    frame = c.driver.encrypt(OPUS)
    assert frame.endswith(b"\xfa\xfa") and c.member.decrypt(BOT, frame) == OPUS
    assert c.driver.decrypt(MEMBER, c.member.encrypt(OPUS)) == OPUS


def test_version_0_passes_frames_through() -> None:
    driver = DaveDriver(BOT, CHANNEL)
    assert driver.start(0) == []
    assert driver.encrypt(OPUS) == OPUS and driver.decrypt(MEMBER, OPUS) == OPUS
    assert driver.decrypt(MEMBER, OPUS + b"\xfa\xfa") is None  # E2EE we cannot open


def test_a_downgrade_executes_on_op_22_and_transition_0_at_once() -> None:
    c = Call()
    c.run(c.call.join(MEMBER))
    c.run(c.call.join(BOT))
    c.run(c.from_driver(c.driver.start(1)))
    assert c.driver.active
    ready = c.driver.receive(21, {"transition_id": 7, "protocol_version": 0})
    assert [orjson.loads(a.data) for a in ready if isinstance(a, SendText)] == [
        {"op": 23, "d": {"transition_id": 7}}
    ]
    assert c.driver.active  # prepared, not executed
    c.driver.receive(22, {"transition_id": 7})
    assert not c.driver.active and c.driver.encrypt(OPUS) == OPUS
    assert c.driver.decrypt(MEMBER, OPUS) == OPUS  # plain frames from others pass
    assert c.driver.receive(21, {"transition_id": 0, "protocol_version": 0}) == []  # at once
    assert c.driver.pending == {}


def test_an_unusable_commit_is_reported_with_a_fresh_key_package() -> None:
    driver = DaveDriver(BOT, CHANNEL)
    driver.start(1)
    actions = driver.receive(29, b"\x00\x05" + b"not a commit")
    assert isinstance(actions[0], SendText) and orjson.loads(actions[0].data) == {
        "op": 31,
        "d": {"transition_id": 5},
    }
    assert isinstance(actions[1], SendBinary) and actions[1].data[0] == 26
    assert driver.invalid_commits == 1


def test_garbage_never_raises() -> None:
    driver = DaveDriver(BOT, CHANNEL)
    driver.start(1)
    for op, payload in [
        (25, b"\xff"),
        (27, b"\x00\xff\xff"),
        (21, {"nope": 1}),
        (22, None),
        (24, "x"),
        (30, b""),
        (11, {"user_ids": []}),
    ]:
        driver.receive(op, payload)  # no exception: logged and ignored
    assert not driver.active


def test_a_new_server_forgets_the_old_call() -> None:
    driver = DaveDriver(BOT, CHANNEL)
    driver.receive(11, {"user_ids": [str(MEMBER)]})
    driver.receive(25, b"early")  # buffered: no session yet
    driver.receive(21, {"transition_id": 4, "protocol_version": 1})
    driver.forget_call()
    assert (driver.users, driver.pending, driver.version) == (set(), {}, 0)
    assert driver.start(0) == []  # the buffered message is gone with the old call
