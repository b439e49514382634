"""Config validation: every error names the key, the value and what was expected."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

import runtime.config as config_module
from runtime.config import ConfigError, load_config, parse_config, parse_shard_ids

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_are_valid() -> None:
    default = load_config(ROOT / "config/shardline.toml")
    assert default.shards.count is None and default.shards.ids is None
    example = load_config(ROOT / "config/production.example.toml")
    assert "message_content" in example.shards.intent_names
    assert example.shards.intents & (1 << 15)


def test_the_production_example_sets_every_key_the_loader_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read: list[str] = []
    original = config_module._Reader.get

    def spy(reader: Any, dotted: str, default: Any, validate: Any) -> Any:
        read.append(dotted)
        return original(reader, dotted, default, validate)

    monkeypatch.setattr(config_module._Reader, "get", spy)
    parse_config({})
    text = (ROOT / "config/production.example.toml").read_text()
    example = tomllib.loads(text)
    documented = {f"{s}.{k}" for s, table in example.items() for k in table}
    # A section a single host leaves out ([cluster]) is shown commented out, key by key.
    section = ""
    for line in text.splitlines():
        if m := re.fullmatch(r"# \[(\w+)\]", line):
            section = m.group(1)
        elif section and (m := re.match(r"# (\w+) = ", line)):
            documented.add(f"{section}.{m.group(1)}")
        elif not line.startswith("#"):
            section = ""
    assert read and set(read) - documented == set()


def test_values_are_parsed() -> None:
    config = parse_config(
        {
            "discord": {"rest_url": "http://127.0.0.1:9000/api/v10/", "gateway_url": "ws://x:1"},
            "shards": {
                "count": 16,
                "ids": "0-3,8",
                "intents": ["guilds", "Guild_Messages"],
                "compression": "zstd-stream",
            },
            "log": {"format": "json"},
        }
    )
    assert config.discord.rest_url == "http://127.0.0.1:9000/api/v10"
    assert config.shards.count == 16 and config.shards.ids == (0, 1, 2, 3, 8)
    assert config.shards.intents == 1 | 1 << 9
    assert config.shards.compression == "zstd-stream" and config.log.format == "json"


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"shards": {"count": "lots"}}, "shards.count", "'auto' or a positive integer"),
        ({"shards": {"count": 0}}, "shards.count", "'auto' or a positive integer"),
        ({"shards": {"ids": "0-x"}}, "shards.ids", "ranges like"),
        ({"shards": {"count": 4, "ids": "0-7"}}, "shards.ids", "below shards.count (4)"),
        (
            {"shards": {"intents": ["guilds", "guild_mesages"]}},
            "shards.intents",
            "'guild_mesages' is not one",
        ),
        ({"shards": {"compression": "gzip"}}, "shards.compression", "'zlib-stream'"),
        ({"shards": {"large_threshold": 500}}, "shards.large_threshold", "from 50 to 250"),
        ({"discord": {"rest_url": "discord.com"}}, "discord.rest_url", "http://"),
        ({"discord": {"gateway_url": "http://x"}}, "discord.gateway_url", "ws://"),
        ({"ipc": {"events": "tcp://0.0.0.0:5555"}}, "ipc.events", "curve_public_key"),
        ({"ipc": {"curve_public_key": "short"}}, "ipc.curve_public_key", "40-character"),
        ({"log": {"level": "loud"}}, "log.level", "'debug'"),
        ({"restart": {"backoff_max": -1}}, "restart.backoff_max", "positive number"),
        ({"shards": {"cuont": 3}}, "shards.cuont", "a known key of [shards]"),
        ({"shard": {}}, "shard", "one of the sections"),
    ],
)
def test_errors_name_key_value_and_expectation(data: dict, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.toml")
    message = str(info.value)
    assert info.value.key == key
    assert message.startswith(f"test.toml: {key} = ")
    assert expected in message


def test_a_token_in_a_file_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"discord": {"token": "super.secret.token"}})
    assert "super.secret" not in str(info.value)
    assert "DISCORD_TOKEN" in str(info.value)


def test_token_comes_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config({"discord": {"token_env": "MY_BOT_TOKEN"}})
    monkeypatch.delenv("MY_BOT_TOKEN", raising=False)
    assert config.discord.token() is None
    monkeypatch.setenv("MY_BOT_TOKEN", "abc")
    assert config.discord.token() == "abc"
    assert "abc" not in repr(config)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable TOML file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[shards\ncount = 1\n")
    with pytest.raises(ConfigError, match="valid TOML"):
        load_config(bad)


def test_shard_id_ranges() -> None:
    assert parse_shard_ids("0-2, 5,7-8") == (0, 1, 2, 5, 7, 8)
    with pytest.raises(ValueError, match="empty or negative"):
        parse_shard_ids("5-2")


def test_a_malformed_secret_key_is_not_printed_back() -> None:
    secret = "s3cr3t-but-wrong-length"
    with pytest.raises(ConfigError) as caught:
        parse_config({"ipc": {"curve_secret_key": secret}})
    assert secret not in str(caught.value) and "ipc.curve_secret_key" in str(caught.value)


def test_the_cluster_section_is_checked_and_never_prints_a_password() -> None:
    assert not parse_config({}).cluster.enabled  # a single host: no Redis
    config = parse_config(
        {
            "cluster": {
                "redis_url": "rediss://:hunter2@redis.internal:6380/0",
                "fleet": "my-bot",
                "shards": "0-15",
                "lease_ttl": 15,
            }
        }
    )
    cluster = config.cluster
    assert cluster.enabled and cluster.fleet == "my-bot" and cluster.shards == tuple(range(16))
    assert cluster.host_name() and cluster.lease_ttl == 15.0
    with pytest.raises(ConfigError, match=r"cluster\.fleet"):
        parse_config({"cluster": {"redis_url": "redis://localhost"}})
    with pytest.raises(ConfigError, match=r"cluster\.redis_url") as caught:
        parse_config({"cluster": {"redis_url": "http://:hunter2@x", "fleet": "f"}})
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
    for key, value in (("fleet", "a b"), ("host", "../x"), ("shards", "5-1"), ("lease_ttl", 0.5)):
        with pytest.raises(ConfigError, match=rf"cluster\.{key}"):
            parse_config({"cluster": {"redis_url": "redis://r", "fleet": "f", key: value}})


def test_a_fleet_over_tcp_needs_the_keys_which_may_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import zmq

    fleet = {"redis_url": "redis://r", "fleet": "f", "peer_listen": "tcp://0.0.0.0:5557"}
    with pytest.raises(ConfigError, match=r"cluster\.peer_listen.*curve"):
        parse_config({"cluster": fleet})
    public, secret = (k.decode() for k in zmq.curve_keypair())
    keys = {"curve_public_key": public, "curve_secret_key": "${TEST_CURVE_SECRET}"}
    with pytest.raises(ConfigError, match=r"ipc\.curve_secret_key.*TEST_CURVE_SECRET"):
        parse_config({"ipc": keys, "cluster": fleet})  # named, and not set
    monkeypatch.setenv("TEST_CURVE_SECRET", secret)
    monkeypatch.setenv("TEST_POD_IP", "10.0.0.7")
    config = parse_config({"ipc": keys, "cluster": {**fleet, "advertise": "${TEST_POD_IP}"}})
    assert config.ipc.curve_secret_key == secret and config.cluster.advertise == "10.0.0.7"
    with pytest.raises(ConfigError, match=r"cluster\.advertise"):
        parse_config({"cluster": {**fleet, "advertise": "a b"}, "ipc": keys})


def test_redact_url_hides_only_the_password() -> None:
    from runtime.config import redact_url

    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://user:pw@h") == "rediss://user:***@h"
    assert redact_url("redis://h:6379") == "redis://h:6379"
    assert redact_url("unix://:pw@/run/redis.sock") == "unix://:***@/run/redis.sock"
    assert (
        redact_url("unix:///run/r.sock?password=pw&db=1") == "unix:///run/r.sock?password=***&db=1"
    )
