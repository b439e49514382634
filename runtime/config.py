"""shardline's configuration: TOML in, validated dataclasses out.

Every validation error names the key, the value found and what was expected. The token is
never read from a file: only from the environment variable the config names
(``DISCORD_TOKEN`` by default), and it is never printed.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipc.intents import INTENTS, intents_from_names

__all__ = [
    "COMPRESSIONS",
    "AppConfig",
    "BusConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DiscordConfig",
    "IpcConfig",
    "LogConfig",
    "MetricsConfig",
    "RestartConfig",
    "ShardsConfig",
    "load_config",
    "parse_config",
    "parse_listen",
    "parse_shard_ids",
    "redact_url",
]

COMPRESSIONS = ("zlib-stream", "zstd-stream", "none")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
DEFAULT_REST_URL = "https://discord.com/api/v10"


class ConfigError(ValueError):
    """A config value is wrong; the message names the key, the value and what was expected."""

    def __init__(self, key: str, value: Any, expected: str, source: str = "") -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key} = {value!r}: expected {expected}")
        self.key = key
        self.value = value
        self.expected = expected


@dataclass(frozen=True)
class DiscordConfig:
    token_env: str = "DISCORD_TOKEN"
    rest_url: str = DEFAULT_REST_URL
    gateway_url: str = ""  # empty: ask GET /gateway/bot
    ca_file: str = ""  # extra CA bundle to trust (wss to a private voice server)

    def token(self) -> str | None:
        """The token from the environment, or None when the variable is unset or empty."""
        return os.environ.get(self.token_env) or None


@dataclass(frozen=True)
class ShardsConfig:
    count: int | None = None  # None = "auto": Discord's recommendation
    # large-bot sharding: the count must be a multiple of this (Discord closes 4010 else);
    # None = "auto": max_concurrency when Discord raised it above 1 (large bots), else 1
    multiple_of: int | None = None
    ids: tuple[int, ...] | None = None  # None = all shards
    # reshard by itself (docs/resharding.md) when Discord recommends more shards, a shard
    # holds 80% of 2,500 guilds, or Discord closes one with 4011; checked this often (s)
    auto_reshard: bool = False
    auto_reshard_interval: float = 600.0
    intents: int = INTENTS["guilds"] | INTENTS["guild_messages"] | INTENTS["guild_voice_states"]
    intent_names: tuple[str, ...] = ("guilds", "guild_messages", "guild_voice_states")
    compression: str = "zlib-stream"
    large_threshold: int = 250
    max_payload_bytes: int = 32 * 1024 * 1024  # one inflated gateway payload, at most
    max_identifies_per_hour: int = 10  # per shard: a broken session cannot burn the budget
    spawn: str = "fork"  # "fork" from a preloaded zygote, or "exec" a fresh interpreter


@dataclass(frozen=True)
class IpcConfig:
    runtime_dir: str = ""  # empty: $XDG_RUNTIME_DIR/shardline or /tmp/shardline-$UID
    events: str = ""  # application-side event endpoint (XPUB); empty: ipc:// in runtime_dir
    commands: str = ""  # application-side command endpoint (ROUTER)
    curve_public_key: str = ""  # required for tcp:// endpoints
    curve_secret_key: str = ""
    client_public_keys: tuple[str, ...] = ()  # applications admitted to tcp:// endpoints

    def resolved_runtime_dir(self) -> Path:
        if self.runtime_dir:
            return Path(os.path.expandvars(os.path.expanduser(self.runtime_dir)))
        base = os.environ.get("XDG_RUNTIME_DIR")
        if base:
            return Path(base) / "shardline"
        return Path(f"/tmp/shardline-{os.getuid()}")


@dataclass(frozen=True)
class RestartConfig:
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    hang_timeout: float = 30.0  # no status from a worker for this long: kill and respawn
    max_restarts: int = 10  # within restart_window, then the worker is given up on
    restart_window: float = 600.0


@dataclass(frozen=True)
class VoiceConfig:
    nice: int = -10  # CPU priority voice processes ask for (needs CAP_SYS_NICE; else ignored)
    receive: bool = False  # publish every member's Opus frames on the bus (VoiceAudio)
    record_dir: str = ""  # where `voice record` writes; empty: <runtime dir>/recordings


@dataclass(frozen=True)
class BusConfig:
    # Each application's backlog in the supervisor, at most; past it, its newest events are
    # dropped and counted (runtime/bus.py says why the bus never waits).
    subscriber_buffer_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: this host is one of a fleet coordinated through Redis. Absent (the
    default): a single host, no Redis."""

    # redis://, rediss:// (TLS) or unix://; may carry a password, or ${VAR} for one taken from
    # the environment when connecting (so that it need not be in the file)
    redis_url: str = ""
    fleet: str = ""  # the fleet's name: the key prefix in Redis (several bots may share one)
    host: str = ""  # this host's name in the fleet; empty: the machine's hostname
    shards: tuple[int, ...] | None = None  # None: "auto", take a share; else fixed ids
    lease_ttl: float = 10.0  # seconds a shard's lease lasts unless its host renews it
    # for rediss://: a PEM file of the CA that signed Redis's certificate (empty: the system's)
    redis_ca_file: str = ""
    # where the other hosts push their events to this one; empty: ipc:// in the runtime dir
    # (hosts on one machine only). tcp:// takes the [ipc] CURVE keys.
    peer_listen: str = ""
    # the name or address other hosts reach this host's tcp:// endpoints at when they are
    # bound to a wildcard (0.0.0.0, *, ::); empty: the host name
    advertise: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)

    def host_name(self) -> str:
        return self.host or socket.gethostname()


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs, errors and status): in the
    authority (``:password@``) and in a ``password=`` query parameter."""
    url = re.sub(r"([?&]password=)[^&]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    hidden = f"{user}:***" if colon else "***"
    return f"{scheme}://{hidden}@{hostport}{slash}{path}"


@dataclass(frozen=True)
class MetricsConfig:
    # host:port of the HTTP listener for /metrics, /healthz and /readyz; empty: off.
    listen: str = ""


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class AppConfig:
    """One ``[[apps]]`` entry: a module with ``async def main(client)``, run N times."""

    module: str
    processes: int = 1


@dataclass(frozen=True)
class Config:
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    ipc: IpcConfig = field(default_factory=IpcConfig)
    restart: RestartConfig = field(default_factory=RestartConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "<defaults>"
    apps: tuple[AppConfig, ...] = ()
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("<file>", source, f"a readable TOML file ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", source, f"valid TOML ({exc})") from None
    return parse_config(data, source)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate an already-parsed TOML document."""
    data = dict(data)
    apps = _apps(data.pop("apps", []), source)
    reader = _Reader(data, source)
    token_line = (
        data.get("discord", {}).get("token") if isinstance(data.get("discord"), dict) else None
    )
    if token_line is not None:
        raise ConfigError(
            "discord.token",
            "<hidden>",
            "no token in files: set the DISCORD_TOKEN environment variable "
            "(or name another variable with discord.token_env)",
            source,
        )
    discord = DiscordConfig(
        token_env=reader.get("discord.token_env", DiscordConfig.token_env, _identifier),
        rest_url=reader.get("discord.rest_url", DEFAULT_REST_URL, _url(("http", "https"))),
        gateway_url=reader.get("discord.gateway_url", "", _url(("ws", "wss"), allow_empty=True)),
        ca_file=reader.get("discord.ca_file", "", _string),
    )
    names = reader.get("shards.intents", list(ShardsConfig.intent_names), _intent_list)
    shards = ShardsConfig(
        count=reader.get("shards.count", None, _shard_count),
        multiple_of=reader.get("shards.multiple_of", None, _shard_count),
        auto_reshard=reader.get("shards.auto_reshard", False, _bool),
        auto_reshard_interval=reader.get(
            "shards.auto_reshard_interval", 600.0, _float_range(1.0, 86_400.0)
        ),
        ids=reader.get("shards.ids", None, _shard_ids),
        intents=intents_from_names(names),
        intent_names=tuple(names),
        compression=reader.get("shards.compression", "zlib-stream", _choice(COMPRESSIONS)),
        large_threshold=reader.get("shards.large_threshold", 250, _int_range(50, 250)),
        max_payload_bytes=reader.get(
            "shards.max_payload_bytes", ShardsConfig.max_payload_bytes, _int_range(65_536, 2**31)
        ),
        max_identifies_per_hour=reader.get(
            "shards.max_identifies_per_hour", 10, _int_range(1, 1000)
        ),
        spawn=reader.get("shards.spawn", "fork", _choice(("fork", "exec"))),
    )
    if shards.count is not None and shards.ids is not None:
        too_big = [i for i in shards.ids if i >= shards.count]
        if too_big:
            raise ConfigError(
                "shards.ids",
                data["shards"]["ids"],
                f"shard ids below shards.count ({shards.count}); {too_big[0]} is not",
                source,
            )
    ipc = IpcConfig(
        runtime_dir=reader.get("ipc.runtime_dir", "", _string),
        events=reader.get("ipc.events", "", _endpoint),
        commands=reader.get("ipc.commands", "", _endpoint),
        curve_public_key=reader.get("ipc.curve_public_key", "", _curve_key),
        curve_secret_key=reader.get("ipc.curve_secret_key", "", _curve_key),
        client_public_keys=reader.get("ipc.client_public_keys", (), _curve_key_list),
    )
    for key in ("events", "commands"):
        endpoint = getattr(ipc, key)
        if endpoint.startswith("tcp://") and not (ipc.curve_public_key and ipc.curve_secret_key):
            raise ConfigError(
                f"ipc.{key}",
                endpoint,
                "ipc.curve_public_key and ipc.curve_secret_key to be set for a tcp:// endpoint "
                "(generate them with `python -c 'import zmq; print(zmq.curve_keypair())'`)",
                source,
            )
    restart = RestartConfig(
        backoff_initial=reader.get("restart.backoff_initial", 1.0, _positive_float),
        backoff_max=reader.get("restart.backoff_max", 60.0, _positive_float),
        hang_timeout=reader.get("restart.hang_timeout", 30.0, _positive_float),
        max_restarts=reader.get("restart.max_restarts", 10, _int_range(0, 1_000_000)),
        restart_window=reader.get("restart.restart_window", 600.0, _positive_float),
    )
    log = LogConfig(
        level=reader.get("log.level", "info", _choice(LOG_LEVELS)),
        format=reader.get("log.format", "text", _choice(LOG_FORMATS)),
    )
    voice = VoiceConfig(
        nice=reader.get("voice.nice", -10, _int_range(-20, 19)),
        receive=reader.get("voice.receive", False, _bool),
        record_dir=reader.get("voice.record_dir", "", _string),
    )
    bus = BusConfig(
        subscriber_buffer_bytes=reader.get(
            "bus.subscriber_buffer_bytes",
            BusConfig.subscriber_buffer_bytes,
            _int_range(1 << 20, 1 << 40),
        )
    )
    metrics = MetricsConfig(listen=reader.get("metrics.listen", "", _listen_address))
    cluster = _cluster(reader, data, source, ipc)
    reader.reject_unknown()
    return Config(discord, shards, ipc, restart, log, source, apps, voice, bus, metrics, cluster)


def _cluster(reader: _Reader, data: dict[str, Any], source: str, ipc: IpcConfig) -> ClusterConfig:
    cluster = ClusterConfig(
        redis_url=reader.get("cluster.redis_url", "", _redis_url),
        fleet=reader.get("cluster.fleet", "", _name),
        host=reader.get("cluster.host", "", _name),
        shards=reader.get("cluster.shards", None, _cluster_shards),
        lease_ttl=reader.get("cluster.lease_ttl", 10.0, _float_range(2.0, 300.0)),
        redis_ca_file=reader.get("cluster.redis_ca_file", "", _string),
        peer_listen=reader.get("cluster.peer_listen", "", _endpoint),
        advertise=reader.get("cluster.advertise", "", _advertise),
    )
    if "cluster" not in data:
        return cluster
    if cluster.peer_listen.startswith("tcp://") and not (
        ipc.curve_public_key and ipc.curve_secret_key
    ):
        raise ConfigError(
            "cluster.peer_listen",
            cluster.peer_listen,
            "ipc.curve_public_key and ipc.curve_secret_key to be set for a tcp:// endpoint "
            "(the hosts of a fleet authenticate each other with them; see docs/cluster.md)",
            source,
        )
    for key in ("redis_url", "fleet"):
        if not getattr(cluster, key):
            raise ConfigError(
                f"cluster.{key}",
                "(missing)",
                "a value: [cluster] needs redis_url and fleet (see docs/cluster.md)",
                source,
            )
    return cluster


def _apps(value: Any, source: str) -> tuple[AppConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError("apps", value, "[[apps]] tables", source)
    out = []
    for n, entry in enumerate(value):
        where = f"apps[{n}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, entry, "a table with module and processes", source)
        unknown = set(entry) - {"module", "processes"}
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(f"{where}.{key}", entry[key], "module or processes", source)
        module = entry.get("module")
        if not isinstance(module, str) or not all(
            part.isidentifier() for part in module.split(".")
        ):
            raise ConfigError(f"{where}.module", module, "a dotted module name", source)
        processes = entry.get("processes", 1)
        if type(processes) is not int or not 1 <= processes <= 1024:
            raise ConfigError(f"{where}.processes", processes, "an integer from 1 to 1024", source)
        out.append(AppConfig(module, processes))
    return tuple(out)


def parse_shard_ids(text: str) -> tuple[int, ...]:
    """``"0-3,8,10-11"`` -> (0, 1, 2, 3, 8, 10, 11). Raises ValueError with the bad part."""
    ids: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo_text, hi_text = part.split("-", 1)
            lo, hi = int(lo_text), int(hi_text)
            if lo > hi or lo < 0:
                raise ValueError(f"range {part!r} is empty or negative")
            ids.update(range(lo, hi + 1))
        else:
            value = int(part)
            if value < 0:
                raise ValueError(f"shard id {part!r} is negative")
            ids.add(value)
    if not ids:
        raise ValueError("no shard ids")
    return tuple(sorted(ids))


# -- the reader and per-key validators --------------------------------------------------------

Validator = Callable[[Any], Any]


class _Invalid(Exception):
    def __init__(self, expected: str) -> None:
        self.expected = expected


class _Reader:
    """Reads dotted keys from the document, remembering which were read."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data = data
        self.source = source
        self.seen: set[str] = set()

    def get(self, dotted: str, default: Any, validate: Validator) -> Any:
        section, key = dotted.split(".", 1)
        self.seen.add(dotted)
        table = self.data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, table, "a table ([section])", self.source)
        if key not in table:
            return default
        try:
            return validate(table[key])
        except _Invalid as exc:
            shown = table[key]
            if "secret" in key:  # never print a secret
                shown = "<hidden>"
            elif key.endswith("_url") and isinstance(shown, str):
                shown = redact_url(shown)
            raise ConfigError(dotted, shown, exc.expected, self.source) from None

    def reject_unknown(self) -> None:
        sections = {k.split(".")[0] for k in self.seen}
        for section, table in self.data.items():
            if section not in sections:
                raise ConfigError(
                    section,
                    "...",
                    f"one of the sections {', '.join(sorted(sections))}",
                    self.source,
                )
            for key in table:
                if f"{section}.{key}" not in self.seen:
                    known = sorted(
                        k.split(".", 1)[1] for k in self.seen if k.startswith(section + ".")
                    )
                    raise ConfigError(
                        f"{section}.{key}",
                        table[key],
                        f"a known key of [{section}] ({', '.join(known)})",
                        self.source,
                    )


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("a string")
    return value


def _identifier(value: Any) -> str:
    if not isinstance(value, str) or not value.replace("_", "").isalnum():
        raise _Invalid("the name of an environment variable, like DISCORD_TOKEN")
    return value


def _url(schemes: tuple[str, ...], allow_empty: bool = False) -> Validator:
    def check(value: Any) -> str:
        if allow_empty and value == "":
            return ""
        if not isinstance(value, str) or not any(value.startswith(s + "://") for s in schemes):
            raise _Invalid(f"a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value.rstrip("/")

    return check


def _shard_count(value: Any) -> int | None:
    if value == "auto":
        return None
    if type(value) is int and value >= 1:
        return value
    raise _Invalid("'auto' or a positive integer")


def _shard_ids(value: Any) -> tuple[int, ...] | None:
    if value == "all":
        return None
    if isinstance(value, list) and all(type(v) is int and v >= 0 for v in value) and value:
        return tuple(sorted(set(value)))
    if isinstance(value, str):
        try:
            return parse_shard_ids(value)
        except ValueError as exc:
            raise _Invalid(f'\'all\', or ids and ranges like "0-15" or "0-3,8" ({exc})') from None
    raise _Invalid('\'all\', or ids and ranges like "0-15" or "0-3,8"')


def _intent_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid('a list of intent names, like ["guilds", "guild_messages"]')
    unknown = [v for v in value if v.strip().lower() not in INTENTS]
    if unknown:
        raise _Invalid(f"intent names from: {', '.join(INTENTS)} ({unknown[0]!r} is not one)")
    return [v.strip().lower() for v in value]


def _choice(options: tuple[str, ...]) -> Validator:
    def check(value: Any) -> str:
        if value not in options:
            raise _Invalid("one of " + ", ".join(repr(o) for o in options))
        return str(value)

    return check


def _int_range(lo: int, hi: int) -> Validator:
    def check(value: Any) -> int:
        if type(value) is not int or not lo <= value <= hi:
            raise _Invalid(f"an integer from {lo} to {hi}")
        return value

    return check


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _Invalid("true or false")
    return value


def _positive_float(value: Any) -> float:
    if type(value) not in (int, float) or value <= 0:
        raise _Invalid("a positive number of seconds")
    return float(value)


def _endpoint(value: Any) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or not value.startswith(("ipc://", "tcp://")):
        raise _Invalid("an endpoint like ipc:///path/to/socket or tcp://host:port")
    return value


def _redis_url(value: Any) -> str:
    expected = "a Redis URL: redis://[:password@]host[:port][/db], rediss:// (TLS) or unix://path"
    if not isinstance(value, str) or not value.startswith(("redis://", "rediss://", "unix://")):
        raise _Invalid(expected)
    scheme, rest = value.split("://", 1)
    if scheme == "unix" and not rest.rpartition("@")[2].startswith("/"):
        raise _Invalid(expected + " (unix:// takes an absolute path)")
    if scheme != "unix" and not rest.rpartition("@")[2].split("/")[0]:
        raise _Invalid(expected + " (no host)")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
        raise _Invalid("a name of letters, digits, '-', '_' and '.' (up to 63 characters)")
    return value


def _advertise(value: Any) -> str:
    value = _from_environment(value)
    if value == "":
        return ""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,253}", value):
        raise _Invalid("a host name or IP address other hosts can reach (empty: the host name)")
    return value


def _cluster_shards(value: Any) -> tuple[int, ...] | None:
    if value == "auto":
        return None
    if isinstance(value, str):
        try:
            return parse_shard_ids(value)
        except ValueError as exc:
            raise _Invalid(f'"auto" or shard ids like "0-15" ({exc})') from None
    raise _Invalid('"auto" or shard ids like "0-15"')


def _float_range(low: float, high: float) -> Validator:
    def check(value: Any) -> float:
        if type(value) not in (int, float) or not low <= value <= high:
            raise _Invalid(f"a number of seconds from {low:g} to {high:g}")
        return float(value)

    return check


def _listen_address(value: Any) -> str:
    if value == "":
        return ""
    if not isinstance(value, str):
        raise _Invalid('host:port, like "127.0.0.1:9464" (empty: off)')
    try:
        parse_listen(value)
    except ValueError as exc:
        raise _Invalid(f'host:port, like "127.0.0.1:9464" (empty: off): {exc}') from None
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) into its parts; ValueError naming the fault."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"must be host:port (like 127.0.0.1:9464), not {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _curve_key_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) == 40 for v in value):
        raise _Invalid("a list of 40-character Z85 CURVE public keys (from `shardline keygen`)")
    return tuple(value)


def _from_environment(value: Any) -> Any:
    """``"${NAME}"`` is the environment variable NAME's value (so that a secret need not be
    in the file); anything else is itself."""
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value)
        if match:
            found = os.environ.get(match.group(1))
            if not found:
                raise _Invalid(f"a value, but the environment variable {match.group(1)} is not set")
            return found
    return value


def _curve_key(value: Any) -> str:
    value = _from_environment(value)
    if value == "":
        return ""
    if not isinstance(value, str) or len(value) != 40:
        raise _Invalid(
            'a 40-character Z85 CURVE key (from `shardline keygen`), or "${VAR}" to take it '
            "from the environment"
        )
    return value
