"""Messages between a worker process (shard or voice) and the supervisor's control socket.

Worker -> supervisor messages are events, supervisor -> worker messages are commands. On the
wire each is ``[type_name, body]`` (the supervisor's ROUTER adds the worker's identity).
:class:`SessionCheckpoint` also travels on the event bus, in order with the dispatches it
vouches for: when the bus has the checkpoint for seq N, it has every dispatch up to N.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ipc.fields import boolean, counts, integer, number, optional_string, raw, string
from ipc.messages import Command, Event

__all__ = [
    "GatewayForward",
    "IdentifyPermit",
    "IdentifyRequest",
    "IdentifySent",
    "ResumePermit",
    "ResumeRequest",
    "SessionCheckpoint",
    "ShardStatus",
    "Shutdown",
    "VoiceEnded",
    "VoicePause",
    "VoicePlay",
    "VoiceRecord",
    "VoiceResume",
    "VoiceServerMove",
    "VoiceStatus",
    "VoiceStop",
    "VoiceVolume",
    "WorkerHello",
    "gateway_url_problem",
]

MAX_URL_LENGTH = 2048
MAX_SESSION_ID_LENGTH = 256


def gateway_url_problem(url: object) -> str | None:
    """Why ``url`` cannot be a gateway (or resume) URL, or None when it can: a ``wss://`` or
    ``ws://`` URL with a host, no credentials, no query and nothing odd in it. A resume URL
    comes from the server or from a file on disk, and the token is sent to it."""
    if not isinstance(url, str) or not url:
        return "not a non-empty string"
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("wss", "ws"):
        return f"scheme {parts.scheme!r} is not wss:// or ws://"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "carries credentials"
    if parts.query or parts.fragment:
        return "carries a query or fragment"
    if port == 0:
        return "has port 0"
    return None


class WorkerHello(Event):
    """A worker's first words: ``kind`` (shard or voice), its id and its pid."""

    __slots__ = ()
    type_name = "control.hello"
    kind = string()  # "shard" or "voice"
    worker_id = string()  # "3" for shard 3, the guild id for voice
    pid = integer()


class ShardStatus(Event):
    """Sent every second; ``state`` is one of connecting, identifying, ready, resuming,
    backing off, fatal, stopped."""

    __slots__ = ()
    type_name = "control.shard_status"
    shard = integer()
    state = string()
    latency_ms = raw()
    seq = raw()
    session = optional_string()
    guilds = integer(default=0)
    guilds_pending = integer(default=0)  # READY listed them, no GUILD_CREATE yet
    dispatch_rate = number(default=0.0)
    reconnects = integer(default=0)
    dropped = integer(default=0)  # bus messages dropped at the high-water mark
    queued_commands = integer(default=0)
    # Counted since the process started (the supervisor adds them up across restarts):
    dispatch_types = counts()  # by event_type label (ipc.labels)
    identifies = integer(default=0)
    resumes = integer(default=0)
    invalid_sessions = integer(default=0)
    heartbeat_acks = integer(default=0)
    closes = counts()  # by close code label (ipc.labels)


class SessionCheckpoint(Event):
    """Everything needed to RESUME this shard's session from another process."""

    __slots__ = ()
    type_name = "shardline.checkpoint"
    shard = integer()
    session_id = string()
    seq = integer()
    resume_url = string()
    guilds = integer(default=0)  # guilds on the shard, for status after a resume
    user_id = optional_string()  # the bot's user id: a RESUME does not repeat READY's


class IdentifyRequest(Event):
    """The shard needs an identify permit (the schedule grants one per bucket per 5 s)."""

    __slots__ = ()
    type_name = "control.identify_request"
    shard = integer()


class IdentifySent(Event):
    """The shard wrote its IDENTIFY: the bucket's next identify is spaced from now, not
    from the permit (a busy shard can send it a second after being allowed to)."""

    __slots__ = ()
    type_name = "control.identify_sent"
    shard = integer()


class GatewayForward(Event):
    """A dispatch the supervisor needs (the bot's voice state, voice server updates);
    ``payload`` is the gateway payload as received."""

    __slots__ = ()
    type_name = "control.forward"
    shard = integer()
    t = string()
    payload = string()


class IdentifyPermit(Command):
    """Identify now."""

    __slots__ = ()
    type_name = "control.identify_permit"


class ResumeRequest(Event):
    """In a multi-host fleet the shard asks before each RESUME: the supervisor checks that
    this host still holds the shard's lease (fencing) and answers ``control.resume_permit``."""

    __slots__ = ()
    type_name = "control.resume_request"
    shard = integer()


class ResumePermit(Command):
    """Resume now."""

    __slots__ = ()
    type_name = "control.resume_permit"


class Shutdown(Command):
    """Close resumably, checkpoint, exit."""

    __slots__ = ()
    type_name = "control.shutdown"


class VoiceStatus(Event):
    """A voice worker's status, every second."""

    __slots__ = ()
    type_name = "control.voice_status"
    guild = string()
    state = string()
    ping_ms = raw()
    packets = integer(default=0)
    late = integer(default=0)
    jitter_p99_ms = raw()
    playing = raw()
    # Since the process started: frames per send-lateness bucket (keys: the bucket's upper
    # bound from ipc.labels.LATENESS_BUCKETS, or "+Inf") and their summed lateness (s).
    lateness_buckets = counts()
    lateness_sum = number(default=0.0)
    dave_epoch = integer(default=0)  # the MLS group's epoch (0: no group)
    dave_transitions = integer(default=0)  # DAVE protocol transitions executed


class VoiceEnded(Event):
    """A voice process's session ended by itself, just before the process exits: what the
    close-code table says comes next (``outcome``, an :class:`ipc.states.VoiceOutcome` value:
    stop, rejoin, resume, identify again, wait for a new server) and the first cause
    (``message``)."""

    __slots__ = ()
    type_name = "control.voice_ended"
    guild = string()
    outcome = string()
    code = integer(default=0)
    message = string()


class VoicePlay(Command):
    """Play an audio file (``path``; ffmpeg decodes it, ``.pcm`` is raw s16le 48 kHz stereo)."""

    __slots__ = ()
    type_name = "control.voice_play"
    path = string()
    queue = boolean(default=False)  # after what is playing, instead of replacing it


class VoicePause(Command):
    """Pause playback (five silence frames, then SPEAKING off)."""

    __slots__ = ()
    type_name = "control.voice_pause"


class VoiceResume(Command):
    """Carry on after a pause."""

    __slots__ = ()
    type_name = "control.voice_resume"


class VoiceVolume(Command):
    """Scale playback: 1.0 plays as is."""

    __slots__ = ()
    type_name = "control.voice_volume"
    volume = number()


class VoiceStop(Command):
    """Stop what plays and empty the queue."""

    __slots__ = ()
    type_name = "control.voice_stop"


class VoiceRecord(Command):
    """Start recording every member to one WAV file each in ``directory``; an empty
    ``directory`` stops (and closes the files)."""

    __slots__ = ()
    type_name = "control.voice_record"
    directory = string()


class VoiceServerMove(Command):
    """A new VOICE_SERVER_UPDATE for the session (a region move): reconnect there."""

    __slots__ = ()
    type_name = "control.voice_server"
    token = string()
    endpoint = string()
