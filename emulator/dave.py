"""DAVE as a voice server runs it for one call, without I/O, plus an emulated call member.

:class:`DaveCall` keeps what Discord's voice server knows of a call's MLS group: who holds
which leaf, the epoch, the key packages waiting to be added. It signs the external
proposals that add and remove members, picks the first commit that answers them, announces
it (op 29) to the group and welcomes (op 30) the new members, then executes the transition
(op 22) once everybody said ready (op 23). Every method returns the messages to deliver.

:class:`EmulatedMember` is a call member built on ``davey`` (the client-side DAVE library),
living inside the emulator: tests hear the bot through it and make it speak.

Source: daveprotocol.com (opcodes 21-31, transitions), RFC 9420 (leaf placement 7.7/12.1.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import davey

from emulator.mls import ExternalSender, split_commit_welcome

__all__ = ["DaveCall", "EmulatedMember", "Outbound"]


@dataclass(slots=True)
class Outbound:
    """A message for ``user_id``: binary ``payload`` for ops 25/27/29/30, JSON otherwise."""

    user_id: int
    op: int
    payload: bytes | dict[str, Any]


@dataclass
class _Round:
    """Proposals out, waiting for the first commit."""

    epoch: int
    committers: set[int]
    add: list[int]  # users, in proposal order
    key_packages: dict[int, bytes]
    remove: list[int]  # leaf indices
    creator: int | None = None  # the member whose pending group becomes the group


@dataclass
class DaveCall:
    channel_id: int
    sender: ExternalSender
    epoch: int | None = None  # None: no group yet
    leaves: list[int | None] = field(default_factory=list)  # the user at each leaf
    waiting: dict[int, bytes] = field(default_factory=dict)  # key packages, arrival order
    stale: set[int] = field(default_factory=set)  # leaves to remove
    members: set[int] = field(default_factory=set)  # users in the call speaking DAVE
    round: _Round | None = None
    transitions: dict[int, set[int]] = field(default_factory=dict)  # id -> not yet ready
    last_transition: int = 0
    corrupt_next_welcome: bool = False  # test hook: the next op 30 carries garbage

    def join(self, user_id: int) -> list[Outbound]:
        """A member entered the call: it gets the external sender (op 25)."""
        self.members.add(user_id)
        return [Outbound(user_id, 25, self.sender.package())]

    def key_package(self, user_id: int, key_package: bytes) -> list[Outbound]:
        """Op 26: the member wants in (again: a fresh key package replaces its old leaf)."""
        if user_id not in self.members:
            return []
        self._drop_leaf(user_id)
        self.waiting[user_id] = key_package
        return self._propose()

    def commit(self, user_id: int, data: bytes) -> list[Outbound]:
        """Op 28: the first commit answering the proposals wins; later ones are ignored."""
        r = self.round
        if r is None or user_id not in r.committers:
            return []
        commit, welcome = split_commit_welcome(data)
        if r.add and welcome is None:
            return []  # a commit that adds members must welcome them
        self.round = None
        if r.creator is not None:
            self.leaves, self.epoch = [r.creator], 0
        remaining = [
            u for leaf, u in enumerate(self.leaves) if u is not None and leaf not in r.remove
        ]
        for leaf in r.remove:
            if leaf < len(self.leaves):
                self.leaves[leaf] = None
        for user in r.add:
            self._place(user)
        while self.leaves and self.leaves[-1] is None:
            self.leaves.pop()
        assert self.epoch is not None
        self.epoch += 1
        self.last_transition = tid = self.last_transition % 0xFFFF + 1
        prefix = tid.to_bytes(2, "big")
        out = [Outbound(u, 29, prefix + commit) for u in remaining]
        body = prefix + (welcome or b"")
        if self.corrupt_next_welcome:
            self.corrupt_next_welcome, body = False, prefix + b"\x00\x02garbage"
        out += [Outbound(u, 30, body) for u in r.add]
        self.transitions[tid] = set(remaining) | set(r.add)
        return out

    def ready(self, user_id: int, transition_id: int) -> list[Outbound]:
        """Op 23: when all members of a transition are ready, execute it (op 22)."""
        waiting = self.transitions.get(transition_id)
        if waiting is None:
            return []
        waiting.discard(user_id)
        if waiting:
            return []
        del self.transitions[transition_id]
        execute = {"transition_id": transition_id}
        group = [u for u in self.leaves if u is not None]
        return [Outbound(u, 22, execute) for u in group] + self._propose()

    def invalid(self, user_id: int, transition_id: int) -> list[Outbound]:
        """Op 31: the member could not use a commit or welcome; it will send a new key
        package, and its leaf (if the group gave it one) goes."""
        out = self.ready(user_id, transition_id)
        self._drop_leaf(user_id)
        return out

    def leave(self, user_id: int) -> list[Outbound]:
        """The member left the call: remove its leaf, forget what it owed."""
        self.members.discard(user_id)
        self.waiting.pop(user_id, None)
        self._drop_leaf(user_id)
        out: list[Outbound] = []
        for tid in list(self.transitions):
            out += self.ready(user_id, tid)
        if self.round is not None and user_id in self.round.committers | set(self.round.add):
            self.round = None  # answered by nobody now: propose again
        if not any(u in self.members for u in self.leaves):
            self.epoch, self.leaves, self.stale = None, [], set()
        return out + self._propose()

    # -- internals ------------------------------------------------------------------------

    def _drop_leaf(self, user_id: int) -> None:
        for leaf, user in enumerate(self.leaves):
            if user == user_id:
                self.stale.add(leaf)

    def _place(self, user_id: int) -> None:
        """RFC 9420: a new member takes the leftmost blank leaf, else the tree grows."""
        for leaf, user in enumerate(self.leaves):
            if user is None:
                self.leaves[leaf] = user_id
                return
        self.leaves.append(user_id)

    def _propose(self) -> list[Outbound]:
        if self.round is not None or self.transitions or not (self.waiting or self.stale):
            return []
        if self.epoch is None:
            if len(self.waiting) < 2:
                return []  # alone in the call: nobody to share a group with yet
            creator, *others = self.waiting
            kps = {u: self.waiting.pop(u) for u in others}
            self.round = _Round(0, {creator}, others, kps, [], creator=creator)
            self.waiting.pop(creator)
        else:
            committers = {
                u for leaf, u in enumerate(self.leaves) if u is not None and leaf not in self.stale
            }
            if not committers:  # everybody in the group is leaving: start over
                self.epoch, self.leaves, self.stale = None, [], set()
                return self._propose()
            add = list(self.waiting)
            kps, self.waiting = dict(self.waiting), {}
            self.round = _Round(self.epoch, committers, add, kps, sorted(self.stale))
            self.stale = set()
        r = self.round
        payload = self.sender.proposals(
            self.channel_id, r.epoch, add=[r.key_packages[u] for u in r.add], remove=r.remove
        )
        return [Outbound(u, 27, payload) for u in sorted(r.committers)]


_OPERATIONS = (davey.ProposalsOperationType.append, davey.ProposalsOperationType.revoke)


class EmulatedMember:
    """A second member of the call, inside the emulator, speaking DAVE with ``davey``."""

    def __init__(self, user_id: int, channel_id: int) -> None:
        self.user_id = user_id
        self.session = davey.DaveSession(davey.DAVE_PROTOCOL_VERSION, user_id, channel_id)

    def receive(self, op: int, payload: bytes | dict[str, Any]) -> list[tuple[int, Any]]:
        """Handle a server message; returns the (op, payload) replies it sends."""
        s = self.session
        if op == 25 and isinstance(payload, bytes):
            s.set_external_sender(payload)
            return [(26, s.get_serialized_key_package())]
        if op == 27 and isinstance(payload, bytes):
            kind = _OPERATIONS[payload[0] & 1]
            answer = s.process_proposals(kind, payload[1:])
            if answer is None:
                return []
            return [(28, answer.commit + (answer.welcome or b""))]
        if op in (29, 30) and isinstance(payload, bytes):
            tid = int.from_bytes(payload[:2], "big")
            try:
                (s.process_commit if op == 29 else s.process_welcome)(payload[2:])
            except Exception:  # davey raises plain exceptions for bad MLS input
                s.reinit(davey.DAVE_PROTOCOL_VERSION, self.user_id, s.channel_id)
                return [(31, {"transition_id": tid}), (26, s.get_serialized_key_package())]
            return [(23, {"transition_id": tid})]
        return []

    @property
    def ready(self) -> bool:
        return bool(self.session.ready)

    def encrypt(self, opus: bytes) -> bytes:
        return self.session.encrypt_opus(opus) if self.ready else opus

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        """The sender's Opus frame, or None when it does not decrypt for us."""
        try:
            return self.session.decrypt(user_id, davey.MediaType.audio, frame)
        except Exception:  # davey raises plain exceptions for frames it cannot open
            return None
