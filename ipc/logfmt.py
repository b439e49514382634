"""One log line format for every shardline process: ``ts level kind=shard id=3 msg=... k=v``
(``text``) or one JSON object per line (``json``). Set up once per process with
:func:`setup_logging`; pass fields with ``log.info("msg", extra={"fields": {...}})``, or
``extra=about(shard=3)`` for the fields metrics are labelled with.

Lines carry the metrics' label names (docs/metrics.md), so logs and metrics join: a shard
process's lines ``shard``, a voice process's ``guild``, and the supervisor's lines about a
shard or a guild the same field."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["KeyValueFormatter", "about", "setup_logging"]

# The metrics label a process kind's ident is: every line of that process carries it.
LABEL_OF_KIND = {"shard": "shard", "voice": "guild"}


def about(*, shard: int | None = None, guild: int | str | None = None) -> dict[str, Any]:
    """``extra=`` for a log line about a shard or a guild (the metrics' label names)."""
    fields: dict[str, Any] = {}
    if shard is not None:
        fields["shard"] = str(shard)
    if guild is not None:
        fields["guild"] = str(guild)
    return {"fields": fields}


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    def __init__(self, kind: str, ident: str, fmt: str = "text") -> None:
        super().__init__()
        self.kind = kind
        self.ident = ident
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "kind": self.kind,
            "id": self.ident,
            "msg": record.getMessage(),
        }
        label = LABEL_OF_KIND.get(self.kind)
        if label is not None:
            fields[label] = self.ident
        fields.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.json:
            return orjson.dumps(fields, default=str).decode()
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _set_level(logger: logging.Logger, level: str) -> None:
    """Set the level only when it changes: ``setLevel`` clears the cache of every logger in
    the process, and the zygote retags its handler between forks."""
    number = logging.getLevelName(level.upper())
    if logger.level != number:
        logger.setLevel(number)


def setup_logging(kind: str, ident: str, level: str = "info", fmt: str = "text") -> None:
    """Log one line per event to stderr, tagged with the process ``kind`` and ``ident``.
    Called again, it retags the handler it installed instead of building a new one (the shard
    zygote calls it once per shard it forks: every object it allocates there is copied into
    each fork)."""
    root = logging.getLogger()
    if len(root.handlers) == 1:
        (handler,) = root.handlers
        formatter = handler.formatter
        if (
            isinstance(formatter, KeyValueFormatter)
            and getattr(handler, "stream", None) is sys.stderr
        ):
            formatter.kind, formatter.ident, formatter.json = kind, ident, fmt == "json"
            _set_level(root, level)
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(kind, ident, fmt))
    root.handlers[:] = [handler]
    _set_level(root, level)
    # websockets logs every frame at debug, tokens included: keep it quiet whatever the level.
    logging.getLogger("websockets").setLevel(logging.WARNING)
