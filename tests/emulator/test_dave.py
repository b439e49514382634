"""The emulator's DAVE call, without sockets: external proposals signed with RFC 9420's
encoding, commits picked and announced, welcomes delivered, transitions executed, and members
built on davey that end up sharing keys (a frame one encrypts, the others decrypt)."""

from __future__ import annotations

import pytest

from emulator.dave import DaveCall, EmulatedMember, Outbound
from emulator.mls import ExternalSender, read_vector, split_commit_welcome, varint, vector

CHANNEL = 1_180_000_000_000_000_123
OPUS = b"\xfc" + bytes(range(59))


def run(call: DaveCall, members: dict[int, EmulatedMember], out: list[Outbound]) -> list[int]:
    """Deliver messages until the call is quiet; returns the ops delivered, in order."""
    seen = []
    while out:
        message = out.pop(0)
        seen.append(message.op)
        for op, payload in members[message.user_id].receive(message.op, message.payload):
            user = message.user_id
            if op == 26:
                out += call.key_package(user, payload)
            elif op == 28:
                out += call.commit(user, payload)
            elif op == 23:
                out += call.ready(user, payload["transition_id"])
            elif op == 31:
                out += call.invalid(user, payload["transition_id"])
    return seen


def enter(call: DaveCall, members: dict[int, EmulatedMember], user: int) -> list[int]:
    members[user] = EmulatedMember(user, CHANNEL)
    return run(call, members, call.join(user))


def hears(members: dict[int, EmulatedMember], speaker: int, listener: int) -> bool:
    frame = members[speaker].encrypt(OPUS)
    return frame != OPUS and members[listener].decrypt(speaker, frame) == OPUS


def test_varints_and_vectors_round_trip() -> None:
    for n in (0, 63, 64, 16383, 16384, 2**30 - 1):
        data = vector(bytes(n % 300)) if n < 70_000 else b""
        if data:
            assert read_vector(data, 0) == (bytes(n % 300), len(data))
        assert len(varint(n)) == (1 if n < 64 else 2 if n < 16384 else 4)
    with pytest.raises(ValueError):
        varint(2**30)


def test_two_members_form_a_group_and_hear_each_other() -> None:
    call, members = DaveCall(CHANNEL, ExternalSender()), {}
    assert enter(call, members, 1) == [25]  # alone: a key package, no group
    assert call.epoch is None
    ops = enter(call, members, 2)
    assert ops == [25, 27, 29, 30, 22, 22]  # proposals to the creator, commit, welcome, execute
    assert call.epoch == 1 and call.leaves == [1, 2]
    assert hears(members, 1, 2) and hears(members, 2, 1)


def test_a_third_member_joins_and_a_leaver_is_removed() -> None:
    call, members = DaveCall(CHANNEL, ExternalSender()), {}
    for user in (1, 2, 3):
        enter(call, members, user)
    assert call.epoch == 2 and call.leaves == [1, 2, 3]
    assert hears(members, 3, 1) and hears(members, 1, 3)
    run(call, members, call.leave(1))  # leaf 0 is removed by a commit from 2 or 3
    assert call.epoch == 3 and call.leaves == [None, 2, 3]
    assert hears(members, 2, 3)
    enter(call, members, 4)  # the blank leaf is reused
    assert call.leaves == [4, 2, 3] and hears(members, 4, 2)


def test_a_corrupt_welcome_is_reported_and_the_member_rejoins() -> None:
    call, members = DaveCall(CHANNEL, ExternalSender()), {}
    enter(call, members, 1)
    call.corrupt_next_welcome = True
    ops = enter(call, members, 2)
    assert 31 not in ops  # op 31 goes to the server: the server sends new proposals
    assert ops.count(27) == 2 and call.epoch == 2  # removed and re-added in one commit
    assert hears(members, 2, 1) and hears(members, 1, 2)


def test_late_commits_are_ignored_and_the_welcome_splits_off() -> None:
    call, members = DaveCall(CHANNEL, ExternalSender()), {}
    enter(call, members, 1)
    enter(call, members, 2)
    members[3] = EmulatedMember(3, CHANNEL)
    out = call.join(3)
    kp = members[3].receive(25, out[0].payload)[0][1]
    proposals = call.key_package(3, kp)
    assert sorted(m.user_id for m in proposals) == [1, 2]  # every group member may commit
    first = members[1].receive(27, proposals[0].payload)[0][1]
    second = members[2].receive(27, proposals[1].payload)[0][1]
    commit, welcome = split_commit_welcome(first)
    assert welcome is not None and commit + welcome == first
    announced = call.commit(1, first)
    assert call.commit(2, second) == []  # lost the race
    assert {(m.user_id, m.op) for m in announced} == {(1, 29), (2, 29), (3, 30)}
