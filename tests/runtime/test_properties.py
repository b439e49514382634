"""Property tests: config, the sessions file, --resume and /gateway/bot answers, fed
generated garbage, raise nothing but their documented errors."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc.checkpoint import Checkpoint, CheckpointError
from runtime.config import ConfigError, parse_config
from runtime.discord_rest import RestError, parse_gateway_bot
from tests.shards.test_protocol_properties import json_values

KEYS = {
    "discord": ["token_env", "rest_url", "gateway_url", "ca_file", "x"],
    "shards": [
        "count",
        "ids",
        "intents",
        "compression",
        "large_threshold",
        "spawn",
        "max_payload_bytes",
        "max_identifies_per_hour",
    ],
    "ipc": [
        "runtime_dir",
        "events",
        "commands",
        "curve_public_key",
        "curve_secret_key",
        "client_public_keys",
    ],
    "restart": ["backoff_initial", "hang_timeout"],
    "voice": ["nice", "receive"],
}
SECTIONS = {
    section: st.dictionaries(st.sampled_from(keys), json_values, max_size=3)
    for section, keys in KEYS.items()
}


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional={**SECTIONS, "apps": json_values}) | json_values)
def test_config_raises_only_config_errors(document: Any) -> None:
    if not isinstance(document, dict):
        document = {"x": document}
    try:
        parse_config(document)
    except ConfigError as exc:
        assert isinstance(exc.key, str)


CHECKPOINT = {
    "shard": json_values | st.integers(min_value=-1, max_value=5),
    "shard_count": json_values | st.integers(min_value=0, max_value=5),
    "session_id": json_values,
    "seq": json_values,
    "resume_url": json_values | st.sampled_from(["wss://g.example", "http://evil"]),
    "saved_at": json_values,
    "guilds": json_values,
    "user_id": json_values,
}


@settings(max_examples=500, deadline=None)
@given(json_values | st.fixed_dictionaries({}, optional=CHECKPOINT))
def test_checkpoints_raise_only_checkpoint_errors(raw: Any) -> None:
    try:
        checkpoint = Checkpoint.from_json(raw)
    except CheckpointError:
        return
    assert checkpoint.problem() is None


@settings(max_examples=500, deadline=None)
@given(json_values | st.fixed_dictionaries({}, optional=CHECKPOINT))
def test_resume_arguments_are_parsed_or_refused(raw: Any) -> None:
    try:
        checkpoint = Checkpoint.from_resume_arg(orjson.dumps(raw).decode(), 0, 1)
    except CheckpointError:
        return
    assert checkpoint.problem() is None and checkpoint.shard_count == 1


@settings(max_examples=500, deadline=None)
@given(
    json_values
    | st.fixed_dictionaries(
        {"url": json_values, "shards": json_values},
        optional={"session_start_limit": json_values},
    )
)
def test_gateway_bot_answers_raise_only_rest_errors(body: Any) -> None:
    try:
        parse_gateway_bot(body)
    except RestError:
        pass
