"""DAVE (Discord's end-to-end encryption for voice) for one session, without I/O.

The gateway hands over DAVE's opcodes (21-31) and the call's membership (11, 13); this
driver keeps the MLS session (``davey``) in step with the voice server and answers with the
messages to send: key packages (26), commits (28), transition ready (23), invalid commit (31).
Media goes through :meth:`DaveDriver.encrypt` and :meth:`DaveDriver.decrypt`, which pass
frames through unchanged while the call runs at protocol version 0.

``davey`` is the only module that knows MLS; nothing outside this file imports it.
Source: daveprotocol.com (opcodes, transitions, passthrough) and PROTOCOL.md's summary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import davey
import orjson

from voiceworker.audio import SILENCE
from voiceworker.gateway import SendBinary, SendText, VoiceAction

__all__ = ["MAX_VERSION", "DaveDriver"]

log = logging.getLogger("shardline.voice")

MAX_VERSION: int = davey.DAVE_PROTOCOL_VERSION
_OPERATIONS = (davey.ProposalsOperationType.append, davey.ProposalsOperationType.revoke)
_BINARY_OPS = frozenset({25, 27, 29, 30})
MAGIC = b"\xfa\xfa"  # the last two bytes of every end-to-end encrypted frame
DOWNGRADE_PASSTHROUGH_SECONDS = 10  # how long frames without E2EE still decrypt after 0
MAX_EARLY = 64  # binary DAVE messages kept before the session exists; more are dropped
MAX_EARLY_BYTES = 1 << 20
MAX_USERS = 100_000  # call members tracked (a call is far smaller; a server could lie)


class DaveDriver:
    """One voice session's DAVE state: the MLS session, the protocol version in effect,
    the transitions prepared but not executed, and the users in the call."""

    def __init__(self, user_id: int, channel_id: int) -> None:
        self.user_id = user_id
        self.channel_id = channel_id
        self.session: davey.DaveSession | None = None
        self.version = 0  # the protocol version media uses now (0: transport only)
        self.pending: dict[int, int] = {}  # transition id -> protocol version
        self.users: set[int] = set()  # other members, from clients connect/disconnect
        self._early: list[tuple[int, Any]] = []  # binary messages before the session existed
        self.invalid_commits = 0
        self.transitions = 0

    @property
    def epoch(self) -> int:
        """The MLS group's epoch (0 before a group exists), for metrics."""
        session = self.session
        if session is None or not session.ready:
            return 0
        try:
            return int(session.epoch or 0)
        except Exception:  # davey raises when no group is established yet
            return 0

    # -- the session description and membership -------------------------------------------

    def forget_call(self) -> None:
        """A fresh connection (a move to another server): nothing of the old call holds."""
        self.users.clear()
        self.pending.clear()
        self._early.clear()
        self.version = 0

    def start(self, version: int) -> list[VoiceAction]:
        """The session description named the call's protocol version: set up for it."""
        self.version = version
        out = self._reinit(version)
        early, self._early = self._early, []
        for op, payload in early:
            out += self.receive(op, payload)
        return out

    def receive(self, op: int, payload: Any) -> list[VoiceAction]:
        """A DAVE opcode (JSON ``d`` or binary payload) or a membership change."""
        if op == 11:
            ids = payload.get("user_ids") if isinstance(payload, dict) else None
            users = [_user_id(u) for u in ids] if isinstance(ids, list) else [None]
            if None in users or len(self.users) + len(users) > MAX_USERS:
                log.warning(f"DAVE: unusable clients-connect (op 11): {_cut(payload)}; ignored")
                return []
            self.users.update(u for u in users if u is not None)
            return []
        if op == 13:
            user = _user_id(payload.get("user_id") if isinstance(payload, dict) else None)
            if user is None:
                log.warning(f"DAVE: unusable client-disconnect (op 13): {_cut(payload)}; ignored")
                return []
            self.users.discard(user)
            return []
        if op in _BINARY_OPS and self.session is None:
            if not isinstance(payload, bytes | bytearray):
                log.warning(f"DAVE: opcode {op} is binary, got {_cut(payload)}; ignored")
                return []
            size = sum(len(p) for _, p in self._early)
            if len(self._early) >= MAX_EARLY or size + len(payload) > MAX_EARLY_BYTES:
                log.warning(f"DAVE: opcode {op} before any session, past {MAX_EARLY}; dropped")
                return []
            self._early.append((op, payload))  # buffered, not dropped
            return []
        handler = _HANDLERS.get(op)
        if handler is None:
            return []
        try:
            return handler(self, payload)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            log.warning(f"DAVE opcode {op} unusable: {exc}")
            return []

    # -- media ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Frames are end-to-end encrypted now."""
        return self.version > 0 and self.session is not None and bool(self.session.ready)

    def encrypt(self, opus: bytes) -> bytes:
        if not self.active:
            return opus
        assert self.session is not None
        return self.session.encrypt_opus(opus)

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        """The sender's Opus frame; None when it does not decrypt (or should have been
        encrypted and is not, outside a passthrough window)."""
        if frame == SILENCE:
            return frame  # silence goes out without E2EE
        if not self.active:
            return None if frame.endswith(MAGIC) else frame
        assert self.session is not None
        try:
            return self.session.decrypt(user_id, davey.MediaType.audio, frame)
        except Exception:  # davey raises plain exceptions for frames it cannot open
            return None

    # -- handlers -------------------------------------------------------------------------

    def _reinit(self, version: int) -> list[VoiceAction]:
        """A fresh MLS state and key package (op 26); version 0 keeps decrypting frames
        without E2EE for a while, so the switch loses nothing."""
        if version <= 0:
            if self.session is not None:
                self.session.reset()
                self.session.set_passthrough_mode(True, DOWNGRADE_PASSTHROUGH_SECONDS)
            return []
        if self.session is None:
            self.session = davey.DaveSession(version, self.user_id, self.channel_id)
        else:
            self.session.reinit(version, self.user_id, self.channel_id)
        return [_binary(26, self.session.get_serialized_key_package())]

    def _on_prepare_transition(self, d: Any) -> list[VoiceAction]:
        tid, version = int(d["transition_id"]), int(d["protocol_version"])
        self.pending[tid] = version
        if version == 0 and self.session is not None:  # a downgrade: accept plain frames
            self.session.set_passthrough_mode(True, DOWNGRADE_PASSTHROUGH_SECONDS)
        if tid == 0:
            return self._execute(0)
        return [_json(23, {"transition_id": tid})]

    def _on_execute_transition(self, d: Any) -> list[VoiceAction]:
        return self._execute(int(d["transition_id"]))

    def _execute(self, tid: int) -> list[VoiceAction]:
        if tid not in self.pending:
            return []
        self.version = self.pending.pop(tid)
        self.transitions += 1
        if self.version > 0 and self.session is not None:
            self.session.set_passthrough_mode(False, DOWNGRADE_PASSTHROUGH_SECONDS)
        return []

    def _on_prepare_epoch(self, d: Any) -> list[VoiceAction]:
        """Epoch 1 means a new group (an upgrade, or the group was reset): start over."""
        if int(d["epoch"]) == 1:
            self.version = int(d["protocol_version"])
            return self._reinit(self.version)
        return []

    def _on_external_sender(self, payload: bytes) -> list[VoiceAction]:
        assert self.session is not None
        self.session.set_external_sender(payload)
        return []

    def _on_proposals(self, payload: bytes) -> list[VoiceAction]:
        assert self.session is not None
        expected = sorted(self.users | {self.user_id})
        try:
            answer = self.session.process_proposals(
                _OPERATIONS[payload[0] & 1], payload[1:], expected
            )
        except Exception as exc:  # davey: unusable proposals; the server resends or moves on
            log.warning(f"DAVE proposals refused: {exc}")
            return []
        if answer is None:
            return []
        return [_binary(28, answer.commit + (answer.welcome or b""))]

    def _on_commit(self, payload: bytes) -> list[VoiceAction]:
        return self._transition(payload, welcome=False)

    def _on_welcome(self, payload: bytes) -> list[VoiceAction]:
        return self._transition(payload, welcome=True)

    def _transition(self, payload: bytes, *, welcome: bool) -> list[VoiceAction]:
        """Ops 29/30: a transition id, then the commit or welcome that moves the group on.
        One that fails is reported (op 31) and answered with a fresh key package."""
        assert self.session is not None
        tid = int.from_bytes(payload[:2], "big")
        try:
            if welcome:
                self.session.process_welcome(payload[2:])
            else:
                self.session.process_commit(payload[2:])
        except Exception as exc:  # davey raises plain exceptions for bad MLS input
            self.invalid_commits += 1
            log.warning(f"DAVE {'welcome' if welcome else 'commit'} {tid} unusable: {exc}")
            return [_json(31, {"transition_id": tid}), *self._reinit(self.version or MAX_VERSION)]
        self.pending[tid] = self.version or MAX_VERSION
        if tid == 0:
            return self._execute(0)
        return [_json(23, {"transition_id": tid})]


def _user_id(value: Any) -> int | None:
    """A user id from the server (a snowflake string, or an int), or None when it is not."""
    if type(value) is int and 0 < value < 2**64:
        return value
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        return int(value)
    return None


def _cut(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json(op: int, d: Any) -> SendText:
    return SendText(orjson.dumps({"op": op, "d": d}))


def _binary(op: int, payload: bytes) -> SendBinary:
    return SendBinary(bytes((op,)) + payload)


_HANDLERS: dict[int, Callable[[DaveDriver, Any], list[VoiceAction]]] = {
    21: DaveDriver._on_prepare_transition,
    22: DaveDriver._on_execute_transition,
    24: DaveDriver._on_prepare_epoch,
    25: DaveDriver._on_external_sender,
    27: DaveDriver._on_proposals,
    29: DaveDriver._on_commit,
    30: DaveDriver._on_welcome,
}
