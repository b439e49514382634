"""The supervisor's command desk: every request an application or the CLI sends gets exactly
one reply. A request is decoded (``ipc.requests``), looked up by class in the handler table
the supervisor filled, checked against its class, and handed to its handler; a type that an
application serves (``shardline.serve``) is handed to that application as a CALL and its
answer relayed back. Sockets stay outside: this takes frames in and gives frames out, so it is
tested without processes."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from ipc.messages import REGISTRY, Command, ErrorCode, ErrorReply, Reply
from ipc.requests import (
    CommandResult,
    RawRequest,
    ServeCommands,
    decode_request,
    encode_call,
    reply_frames,
)

__all__ = ["CALL_TIMEOUT", "SERVER_TTL", "CommandDesk", "Handler", "Options"]

log = logging.getLogger("shardline.supervisor")

C = TypeVar("C", bound=Command)
Options = dict[str, Any]
Handler = Callable[[Any, Options], Awaitable[Reply]]
SERVER_TTL = 30.0  # an application that stops renewing shardline.serve is forgotten
CALL_TIMEOUT = 10.0  # a served command not answered by then gets a timeout error
MAX_PENDING_CALLS = 10_000
MAX_SERVERS = 1024


@dataclass(slots=True)
class _Call:
    requester: bytes  # ROUTER identity of whoever asked
    request_id: bytes
    type_name: str
    deadline: float


class CommandDesk:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._handlers: dict[type[Command], Handler] = {}
        self._servers: dict[str, tuple[bytes, float]] = {}  # type name -> (identity, until)
        self._calls: dict[str, _Call] = {}
        self._call_ids = itertools.count(1)

    def handle(self, cls: type[C], handler: Callable[[C, Options], Awaitable[Reply]]) -> None:
        """Answer commands of ``cls`` (and of its subclasses, unless they have their own)."""
        self._handlers[cls] = handler

    def handler_for(self, cls: type[Command]) -> Handler | None:
        for klass in cls.__mro__:
            handler = self._handlers.get(klass)
            if handler is not None:
                return handler
        return None

    async def receive(self, frames: list[bytes]) -> list[list[bytes]]:
        """One message from the command ROUTER (identity first) -> the messages to send
        back through it: the reply, a CALL to a serving application, or a relayed answer."""
        identity, rest = frames[0], frames[1:]
        decoded = decode_request(rest)
        if isinstance(decoded, tuple):
            request_id, error = decoded
            return [[identity, *reply_frames(request_id, error)]]
        request = decoded
        cls = REGISTRY.command(request.type_name)
        served = self._server_of(request.type_name)
        if served is not None:  # an application serves it (never one of ours)
            return [self._call(identity, served, request)]
        if cls is CommandResult:
            return self._result(identity, request)
        elif cls is ServeCommands:
            return [[identity, *reply_frames(request.request_id, self._serve(identity, request))]]
        try:
            reply = await self._answer(identity, request)
        except Exception as exc:  # a bad request must never take the supervisor down
            log.exception(f"command {request.type_name!r} failed")
            reply = ErrorReply.of(ErrorCode.INTERNAL, f"internal error ({type(exc).__name__})")
        return [[identity, *reply_frames(request.request_id, reply)]]

    async def _answer(self, identity: bytes, request: RawRequest) -> Reply:
        command = request.command()
        if isinstance(command, ErrorReply):
            return command
        handler = self.handler_for(type(command))
        if handler is None:
            return ErrorReply.of(
                ErrorCode.UNKNOWN_COMMAND,
                f"{request.type_name} is declared, but nothing here handles it",
            )
        return await handler(command, request.options)

    # -- commands served by applications ----------------------------------------------------

    def _serve(self, identity: bytes, request: RawRequest) -> Reply:
        """An application serves these command types (until it stops renewing)."""
        command = request.command()
        if isinstance(command, ErrorReply):
            return command
        names = [str(n) for n in command.raw.get("types", [])]
        ours = [n for n in names if self._ours(n)]
        if ours:
            return ErrorReply.of(
                ErrorCode.INVALID, f"{ours[0]} is shardline's own command; it cannot be served"
            )
        until = self.clock() + SERVER_TTL
        self._forget_expired()
        for name in names:
            if name not in self._servers and len(self._servers) >= MAX_SERVERS:
                return ErrorReply.of(ErrorCode.INVALID, f"more than {MAX_SERVERS} served types")
            self._servers[name] = (identity, until)
        return ServeCommands.reply_class()

    def _ours(self, type_name: str) -> bool:
        """Whether the supervisor answers this type itself (an app may not take it over)."""
        cls = REGISTRY.command(type_name)
        if cls is None:
            return False
        return cls in (CommandResult, ServeCommands) or self.handler_for(cls) is not None

    def _server_of(self, type_name: str) -> bytes | None:
        entry = self._servers.get(type_name)
        if entry is None:
            return None
        identity, until = entry
        if self.clock() >= until:
            del self._servers[type_name]
            return None
        return identity

    def served_types(self) -> list[str]:
        """The command types applications of this host serve now."""
        self._forget_expired()
        return sorted(self._servers)

    def _forget_expired(self) -> None:
        now = self.clock()
        for name in [n for n, (_, until) in self._servers.items() if now >= until]:
            del self._servers[name]

    def _call(self, requester: bytes, server: bytes, request: RawRequest) -> list[bytes]:
        if len(self._calls) >= MAX_PENDING_CALLS:
            error = ErrorReply.of(ErrorCode.UNAVAILABLE, "too many commands awaiting an answer")
            return [requester, *reply_frames(request.request_id, error)]
        call_id = str(next(self._call_ids))
        self._calls[call_id] = _Call(
            requester, request.request_id, request.type_name, self.clock() + CALL_TIMEOUT
        )
        return [server, *encode_call(call_id, request)]

    def _result(self, identity: bytes, request: RawRequest) -> list[list[bytes]]:
        """An application answered a CALL: relay its reply to whoever asked."""
        command = request.command()
        if isinstance(command, ErrorReply):
            return [[identity, *reply_frames(request.request_id, command)]]
        assert isinstance(command, CommandResult)
        out = [[identity, *reply_frames(request.request_id, CommandResult.reply_class())]]
        call = self._calls.pop(command.call, None)
        if call is not None:  # the reply object as the application built it
            out.append([call.requester, call.request_id, orjson.dumps(command.raw["reply"])])
        return out

    def expire(self) -> list[list[bytes]]:
        """Calls whose application did not answer in time: their error replies."""
        now = self.clock()
        out = []
        for call_id in [k for k, c in self._calls.items() if now >= c.deadline]:
            call = self._calls.pop(call_id)
            error = ErrorReply.of(
                ErrorCode.TIMEOUT,
                f"the application serving {call.type_name} did not answer within "
                f"{CALL_TIMEOUT:.0f}s",
            )
            out.append([call.requester, *reply_frames(call.request_id, error)])
        return out
