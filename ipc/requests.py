"""What an application or the CLI can ask shardline itself (not Discord), each a command
class that declares its reply class. The supervisor keeps a handler table keyed by these
classes; ``ipc.Client`` and the CLI build instances. A custom command is declared the same
way, in the application's own module, and served by an application (``Client.serve``).

The request wire (``docs/wire.md``): a DEALER sends ``[request id, type, body, options]``
(options may be left out); the reply is ``[request id, reply]``. A command an application
serves reaches it as ``[CALL, call id, type, body, options]``; it answers with the
:class:`CommandResult` request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from ipc.fields import (
    InvalidFieldError,
    boolean,
    integer,
    number,
    raw,
    snowflake,
    string,
)
from ipc.messages import (
    REGISTRY,
    Accepted,
    Command,
    ErrorCode,
    ErrorReply,
    GatewayCommand,
    Reply,
    Routed,
)

__all__ = [
    "CALL",
    "MAX_REQUEST_ID",
    "MAX_TYPE_NAME",
    "VIA",
    "CommandResult",
    "Deploy",
    "Deploying",
    "GetStatus",
    "JoinVoice",
    "LeaveVoice",
    "PauseAudio",
    "PlayAudio",
    "RawRequest",
    "Record",
    "Recording",
    "ReportClientStats",
    "Request",
    "Reshard",
    "ReshardPlan",
    "RestartShards",
    "Restarting",
    "ResumeAudio",
    "ServeCommands",
    "SetVolume",
    "StatusReply",
    "StopAudio",
    "StopFleet",
    "Stopping",
    "VoiceRequest",
    "decode_call",
    "decode_request",
    "encode_call",
    "encode_request",
    "relay_frames",
    "reply_frames",
    "request_frames",
]

CALL = b"CALL"  # first frame of a command the supervisor hands to the application serving it
MAX_TYPE_NAME = 128
MAX_REQUEST_ID = 64
MAX_RESHARD_COUNT = 65_536
MAX_SERVED_TYPES = 64
MAX_PATH = 4096


# -- replies ----------------------------------------------------------------------------------


class StatusReply(Reply):
    """``status`` is the fleet status object (:class:`ipc.status.FleetStatus` as JSON)."""

    __slots__ = ()
    type_name = "shardline.reply.status"
    status = raw()


class Stopping(Reply):
    """The fleet is stopping: shards close resumably, sessions are saved."""

    __slots__ = ()
    type_name = "shardline.reply.stopping"
    stopping = boolean(default=True)


class Restarting(Reply):
    """``restarting``: the shard ids that will be replaced, one at a time, each resuming."""

    __slots__ = ()
    type_name = "shardline.reply.restarting"
    restarting = raw(default=[])


class ReshardPlan(Reply):
    """What a reshard takes: ``current`` and ``target`` shard counts, the IDENTIFYs it
    needs and the day's ``remaining``, ``eta`` (seconds, the identify bound), and whether it
    ``started`` (false for a dry run or an abort)."""

    __slots__ = ()
    type_name = "shardline.reply.reshard"
    current = integer()
    target = integer()
    identifies = integer()
    remaining = integer()
    eta = number()
    started = boolean(default=False)


class Deploying(Reply):
    """``apps``: the application processes that will be replaced, in order (``module[i]``)."""

    __slots__ = ()
    type_name = "shardline.reply.deploying"
    apps = raw(default=[])


class Recording(Routed):
    """A recording started (``directory`` holds one WAV per member) or stopped (``""``)."""

    __slots__ = ()
    type_name = "shardline.reply.recording"
    directory = string()


# -- requests to the supervisor ---------------------------------------------------------------


class Request(Command):
    """A command for shardline itself. Its body is a JSON object of its declared fields;
    anything else is refused before a handler sees it."""

    __slots__ = ()
    reply_class: ClassVar[type[Reply]] = Accepted


class GetStatus(Request):
    """The fleet's status: what ``shardline status --json`` prints."""

    __slots__ = ()
    type_name = "shardline.status"
    reply_class = StatusReply


class StopFleet(Request):
    """Every shard closes resumably and checkpoints; the supervisor exits."""

    __slots__ = ()
    type_name = "shardline.stop"
    reply_class = Stopping


class RestartShards(Request):
    """Replace one shard's process (``shard``) or every shard one at a time (``rolling``);
    each new process resumes the session."""

    __slots__ = ()
    type_name = "shardline.restart"
    reply_class = Restarting
    shard = integer(default=None)
    rolling = boolean(default=False)

    def check(self) -> None:
        if (self.raw.get("shard") is None) == (self.raw.get("rolling") is not True):
            raise InvalidFieldError("shard", "or rolling: true is required, and only one")


class Reshard(Request):
    """Reshard to ``count`` shards with no event lost (docs/resharding.md): the new
    generation starts beside the running one, and the applications switch to it once every
    new shard is READY with its guilds. ``dry_run``: only check and say what it would take.
    ``abort``: stop a reshard under way (the running generation is untouched)."""

    __slots__ = ()
    type_name = "shardline.reshard"
    reply_class = ReshardPlan
    count = integer(default=None)
    dry_run = boolean(default=False)
    abort = boolean(default=False)

    def check(self) -> None:
        count, abort = self.raw.get("count"), self.raw.get("abort") is True
        if (count is None) != abort:
            raise InvalidFieldError("count", "or abort: true is required, and only one")
        if count is not None and not 1 <= count <= MAX_RESHARD_COUNT:
            raise InvalidFieldError("count", f"must be from 1 to {MAX_RESHARD_COUNT}")


class Deploy(Request):
    """Replace every application process (``[[apps]]``) with a fresh one, one at a time, each
    new one subscribed before its old one stops: new application code, no event lost."""

    __slots__ = ()
    type_name = "shardline.deploy"
    reply_class = Deploying


class ReportClientStats(Request):
    """A subscriber's counts (``ipc.Client`` sends one every 2 s), shown in status."""

    __slots__ = ()
    type_name = "shardline.client_stats"
    name = string()
    received = integer()
    gaps = integer()

    def check(self) -> None:
        if len(self.raw["name"]) > 128:
            raise InvalidFieldError("name", "is longer than 128 characters")


class ServeCommands(Request):
    """This application handles these (custom) command types: the supervisor hands each
    such request to it as a CALL. Send it again every few seconds (the supervisor forgets
    a server after 30 s of silence)."""

    __slots__ = ()
    type_name = "shardline.serve"
    types = raw(default=[])

    def check(self) -> None:
        types = self.raw.get("types")
        if not isinstance(types, list) or len(types) > MAX_SERVED_TYPES:
            raise InvalidFieldError("types", f"must be a list of {MAX_SERVED_TYPES} at most")
        for name in types:
            if not isinstance(name, str) or not 0 < len(name) <= MAX_TYPE_NAME:
                raise InvalidFieldError("types", "must hold command type names")


class CommandResult(Request):
    """An application's answer to a CALL: ``call`` is the call id, ``reply`` the reply
    object, as a requester will read it."""

    __slots__ = ()
    type_name = "shardline.result"
    call = string()
    reply = raw()

    def check(self) -> None:
        reply = self.raw.get("reply")
        if not isinstance(reply, dict) or type(reply.get("ok")) is not bool:
            raise InvalidFieldError("reply", 'must be a reply object with "ok"')


# -- voice ------------------------------------------------------------------------------------


class VoiceRequest(Request):
    """A voice command: ``guild_id`` names the guild whose voice session it is for."""

    __slots__ = ()
    reply_class = Routed
    guild_id = snowflake()


class JoinVoice(VoiceRequest):
    """Join (or move to) a voice channel: routed to the shard that sends op 4; the voice
    process starts when Discord answers."""

    __slots__ = ()
    type_name = "shardline.voice.join"
    channel_id = snowflake()


class LeaveVoice(VoiceRequest):
    """Leave the guild's voice channel: the voice process ends, the shard sends op 4."""

    __slots__ = ()
    type_name = "shardline.voice.leave"


class PlayAudio(VoiceRequest):
    """Play a file (anything ffmpeg reads; ``.pcm`` is raw s16le 48 kHz stereo), replacing
    what plays, or after it with ``queue``."""

    __slots__ = ()
    type_name = "shardline.voice.play"
    path = string()
    queue = boolean(default=False)

    def check(self) -> None:
        path = self.raw["path"]
        if not path or "\0" in path or len(path) > MAX_PATH:
            raise InvalidFieldError("path", "must be a file path")


class StopAudio(VoiceRequest):
    """Stop what plays and empty the queue."""

    __slots__ = ()
    type_name = "shardline.voice.stop"


class PauseAudio(VoiceRequest):
    """Pause after the current frame (five silence frames, then SPEAKING off)."""

    __slots__ = ()
    type_name = "shardline.voice.pause"


class ResumeAudio(VoiceRequest):
    """Carry on after a pause."""

    __slots__ = ()
    type_name = "shardline.voice.resume"


class SetVolume(VoiceRequest):
    """Scale the guild's playback: 1.0 plays as is, 0.0-2.0."""

    __slots__ = ()
    type_name = "shardline.voice.volume"
    volume = number()

    def check(self) -> None:
        volume = self.raw["volume"]
        if not (math.isfinite(volume) and 0.0 <= volume <= 2.0):
            raise InvalidFieldError("volume", f"{volume} is outside 0.0-2.0")


class Record(VoiceRequest):
    """Record every member of the call to one WAV file each; ``stop`` ends it."""

    __slots__ = ()
    type_name = "shardline.voice.record"
    reply_class = Recording
    stop = boolean(default=False)


# -- the request wire -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawRequest:
    """A request as it arrived, before it is known to be a command anyone declares."""

    request_id: bytes
    type_name: str
    body: Any
    options: dict[str, Any]
    body_bytes: bytes  # as sent: a served command is handed on unchanged

    def command(self) -> Command | ErrorReply:
        """The declared command class's instance, checked; or the error reply saying why
        there is none."""
        cls = REGISTRY.command(self.type_name)
        if cls is None:
            return ErrorReply.of(
                ErrorCode.UNKNOWN_COMMAND, f"unknown command type {self.type_name!r}"
            )
        if issubclass(cls, GatewayCommand) and not cls.from_applications:
            return ErrorReply.of(
                ErrorCode.UNKNOWN_COMMAND,
                f"{self.type_name} is not a gateway command an app may send",
            )
        command = cls.from_raw(self.body)
        try:
            command.validate()
        except InvalidFieldError as exc:
            error = ErrorReply.invalid(self.type_name, exc)
            if isinstance(command, GatewayCommand):  # say that Discord never saw it
                error = ErrorReply.of(ErrorCode.INVALID, f"{error.error}; not sent")
            return error
        return command


def request_frames(
    request_id: bytes, type_name: str, body: Any, options: dict[str, Any] | None = None
) -> list[bytes]:
    """``[id, type, body, options]``: a request by type name (a command this process may
    have no class for)."""
    return [request_id, type_name.encode(), orjson.dumps(body), orjson.dumps(options or {})]


VIA = "via"  # the option a request another host forwarded carries: that host's name


def relay_frames(request_id: bytes, request: RawRequest, via: str) -> list[bytes]:
    """``request`` forwarded to another host of the fleet: its body as it came, its options
    with ``via`` (the forwarding host) added, under a new ``request_id``."""
    options = orjson.dumps({**request.options, VIA: via})
    return [request_id, request.type_name.encode(), request.body_bytes or b"{}", options]


def encode_request(
    request_id: bytes, command: Command, options: dict[str, Any] | None = None
) -> list[bytes]:
    return request_frames(request_id, command.type_name, command.raw, options)


def decode_request(frames: list[bytes]) -> RawRequest | tuple[bytes, ErrorReply]:
    """A DEALER's request (without the ROUTER's identity frame): ``[id, type, body]`` or
    ``[id, type, body, options]``. Anything else gives the request id (the first frame, cut
    short) and the error reply that it must still get."""
    request_id = frames[0][:MAX_REQUEST_ID] if frames else b""
    if not 3 <= len(frames) <= 4:
        return request_id, ErrorReply.of(
            ErrorCode.MALFORMED,
            f"a request is 3 or 4 frames (id, type, body[, options]), not {len(frames)}",
        )
    type_bytes = frames[1]
    type_name = type_bytes[:MAX_TYPE_NAME].decode(errors="replace")
    if len(type_bytes) > MAX_TYPE_NAME:
        return request_id, ErrorReply.of(
            ErrorCode.UNKNOWN_COMMAND, f"unknown command type {type_name!r}..."
        )
    try:
        body = orjson.loads(frames[2]) if frames[2] else {}
        options = orjson.loads(frames[3]) if len(frames) > 3 and frames[3] else {}
    except orjson.JSONDecodeError as exc:
        return request_id, ErrorReply.of(ErrorCode.MALFORMED, f"request is not JSON: {exc}")
    if not isinstance(options, dict):
        return request_id, ErrorReply.of(ErrorCode.MALFORMED, "options must be a JSON object")
    return RawRequest(request_id, type_name, body, options, frames[2])


def encode_call(call_id: str, request: RawRequest) -> list[bytes]:
    """A served command, handed to the application that serves its type."""
    return [
        CALL,
        call_id.encode(),
        request.type_name.encode(),
        request.body_bytes or b"{}",
        orjson.dumps(request.options),
    ]


def decode_call(frames: list[bytes]) -> RawRequest | None:
    """A CALL as the serving application receives it (None: not a CALL)."""
    if len(frames) != 5 or frames[0] != CALL:
        return None
    decoded = decode_request(frames[1:])
    return None if isinstance(decoded, tuple) else decoded


def reply_frames(request_id: bytes, reply: Reply) -> list[bytes]:
    return [request_id, reply.encode()]
