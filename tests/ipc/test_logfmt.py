"""The one log line format, and setting it up again in a process that already has it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from ipc.logfmt import KeyValueFormatter, about, setup_logging


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    logger = logging.getLogger()
    saved, level = logger.handlers[:], logger.level
    logger.handlers[:] = []
    try:
        yield logger
    finally:
        logger.handlers[:] = saved
        logger.setLevel(level)


def test_a_text_line_carries_kind_id_message_and_fields(
    root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("shard", "3")
    logging.getLogger("shardline.test").info("hello there", extra={"fields": {"seq": 7}})
    line = capsys.readouterr().err.strip()
    assert line.split(" ", 1)[1] == 'level=info kind=shard id=3 msg="hello there" shard=3 seq=7'


def test_json_lines_carry_the_metrics_labels(
    root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """A voice process's lines say ``guild``, the supervisor's lines about a shard ``shard``:
    the label names of docs/metrics.md, so logs and metrics join."""
    setup_logging("voice", "81384788765712384", "info", "json")
    logging.getLogger("shardline.test").warning("late frames")
    assert orjson.loads(capsys.readouterr().err)["guild"] == "81384788765712384"
    setup_logging("supervisor", "-", "info", "json")
    logging.getLogger("shardline.test").warning("respawning", extra=about(shard=5))
    record = orjson.loads(capsys.readouterr().err)
    assert record["shard"] == "5" and "guild" not in record


def test_setting_up_again_retags_the_same_handler(
    root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("shard", "1", "info", "text")
    (handler,) = root.handlers
    setup_logging("shard", "2", "warning", "json")
    assert root.handlers == [handler]
    assert isinstance(handler.formatter, KeyValueFormatter)
    log = logging.getLogger("shardline.test")
    log.info("filtered out at warning")
    log.warning("kept")
    (line,) = capsys.readouterr().err.splitlines()
    record = orjson.loads(line)
    assert (record["kind"], record["id"], record["level"], record["msg"]) == (
        "shard",
        "2",
        "warning",
        "kept",
    )


def test_a_foreign_handler_is_replaced(
    root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    setup_logging("voice", "42")
    assert foreign not in root.handlers
    logging.getLogger("shardline.test").warning("now ours")
    assert "kind=voice id=42" in capsys.readouterr().err
