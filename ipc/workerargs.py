"""A worker's command line, built and parsed by one class each: the supervisor builds
``python -m shards`` / ``python -m voiceworker`` arguments with :meth:`to_argv`, the worker
(and the zygote that prepares forked shards) reads them with :meth:`from_argv`, and tests
and benches start workers the same way. Secrets never travel here: the token comes from the
environment variable the arguments name.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Self

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "ShardArgs", "VoiceArgs", "WorkerArgs"]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
COMPRESSIONS = ("zlib-stream", "zstd-stream", "none")
DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024  # shards.inflate's default, kept in step by a test


def option(default: Any = MISSING, help: str = "", choices: tuple[str, ...] = ()) -> Any:
    """A command-line option: ``--name-with-dashes`` for the field ``name_with_dashes``."""
    meta = {"help": help, "choices": choices}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


class WorkerArgs:
    """Turns the dataclass's fields into a command line and back."""

    prog: ClassVar[str]
    description: ClassVar[str]

    @classmethod
    @functools.cache
    def parser(cls) -> argparse.ArgumentParser:
        """One parser per class and process (the zygote builds it before it freezes)."""
        p = argparse.ArgumentParser(prog=cls.prog, description=cls.description)
        for f in fields(cls):  # type: ignore[arg-type]
            flag = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            kind = f.type if isinstance(f.type, type) else _type_of(str(f.type))
            if kind is bool:
                p.add_argument(flag, action="store_true", help=help_text)
                continue
            kwargs: dict[str, Any] = {"help": help_text}
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            if f.default is MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default
                if f.default is not None:
                    kwargs["help"] = f"{help_text} (default: {f.default})".lstrip()
            if kind in (int, float):
                kwargs["type"] = kind
            p.add_argument(flag, **kwargs)
        return p

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> Self:
        """Parse a command line (``SystemExit`` on a usage error, as argparse does)."""
        namespace = cls.parser().parse_args(argv)
        return cls(**vars(namespace))

    def to_argv(self) -> list[str]:
        """The command line that :meth:`from_argv` turns back into this object."""
        argv: list[str] = []
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.default is not MISSING and value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not None and value is not False:
                argv += [flag, str(value)]
        return argv

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _type_of(annotation: str) -> type:
    """The option type of a (postponed) annotation such as ``"int"`` or ``"str | None"``."""
    base = annotation.split("|")[0].strip()
    return {"int": int, "float": float, "bool": bool}.get(base, str)


@dataclass(frozen=True, slots=True)
class ShardArgs(WorkerArgs):
    prog: ClassVar[str] = "python -m shards"
    description: ClassVar[str] = (
        "Run one Discord gateway shard. The token is read from the environment variable "
        "named by --token-env. Exit status: 0 stopped, 1 crash, 2 usage, 3 fatal close code."
    )

    shard_id: int = option()
    shard_count: int = option()
    gateway: str = option(help="gateway base URL, e.g. wss://gateway.discord.gg")
    token_env: str = option("DISCORD_TOKEN", "the environment variable holding the token")
    intents: str = option(
        "guilds,guild_messages,guild_voice_states",
        "comma-separated intent names, or a number",
    )
    compression: str = option("zlib-stream", "transport compression", COMPRESSIONS)
    large_threshold: int = option(250, "member count above which a guild is large")
    max_payload_bytes: int = option(
        DEFAULT_MAX_PAYLOAD,
        "refuse (and reconnect) a gateway payload that inflates past this many bytes",
    )
    max_identifies_per_hour: int = option(10, "identifies this shard may send in any hour")
    events: str | None = option(None, "event bus endpoint to publish to; none: nowhere")
    control: str | None = option(None, "supervisor control endpoint; none: standalone")
    resume: str | None = option(
        None, 'checkpoint to resume: {"session_id": ..., "seq": ..., "resume_url": ...}'
    )
    identify_interval: float = option(5.0, "standalone only: seconds between identifies")
    ask_before_resume: bool = option(
        False, "ask the supervisor before each RESUME (a multi-host fleet's fencing check)"
    )
    backoff_base: float = option(1.0, "first reconnect delay (s)")
    ca_file: str | None = option(None, "extra CA bundle (PEM) to trust for wss://")
    log_level: str = option("info", "", LOG_LEVELS)
    log_format: str = option("text", "", LOG_FORMATS)

    @property
    def source(self) -> str:
        """Its name on the bus and its control identity."""
        return f"shard:{self.shard_id}"


@dataclass(frozen=True, slots=True)
class VoiceArgs(WorkerArgs):
    prog: ClassVar[str] = "python -m voiceworker"
    description: ClassVar[str] = (
        "One guild's voice session as a process (started by the supervisor with what a "
        "shard collected). The voice token comes from SHARDLINE_VOICE_TOKEN, never the "
        "command line. Exit status: 0 left, 1 failed, 2 usage."
    )

    guild: int = option()
    user: int = option(help="the bot's user id")
    session: str = option(help="session_id from VOICE_STATE_UPDATE")
    endpoint: str = option(help="endpoint from VOICE_SERVER_UPDATE")
    channel: int = option(help="the voice channel's id (DAVE)")
    control: str | None = option(None, "supervisor control endpoint; none: play --play and exit")
    play: str | None = option(None, "standalone: a raw PCM file to play, then leave")
    ca_file: str | None = option(None, "extra CA bundle (PEM) to trust for wss://")
    events: str | None = option(None, "the event bus to publish on")
    receive: bool = option(False, "publish every member's Opus frames on the bus")
    nice: int = option(0, "a better CPU priority to ask for (e.g. -10)")
    log_level: str = option("info", "", LOG_LEVELS)
    log_format: str = option("text", "", LOG_FORMATS)

    @property
    def source(self) -> str:
        return f"voice:{self.guild}"
