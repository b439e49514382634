"""``python -m shards.zygote``, the fork server, driven over its stdin/stdout protocol.

It prepares each shard (parses its command line, sets up logging, loads TLS) before it forks,
so what a child's command line gets wrong must still reach that child's exit status and
stderr, and nothing a child prints may land in the zygote's reply channel."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
VALID = ["--shard-id", "0", "--shard-count", "1", "--gateway", "ws://127.0.0.1:9"]


class Zygote:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shards.zygote"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._ids = iter(range(1, 1000))
        self._pending = b""
        self._stderr = b""
        self.messages: list[dict[str, Any]] = []

    def request(
        self, argv: list[str], env: dict[str, str] | None = None, unset: list[str] | None = None
    ) -> int:
        """Ask for a shard (``env`` set over the zygote's environment, ``unset`` removed from
        it); returns the pid from the zygote's reply."""
        request_id = next(self._ids)
        request = {"id": request_id, "argv": argv, "env": env or {}, "unset": unset or []}
        self.write(orjson.dumps(request) + b"\n")
        reply = self.wait_for(lambda m: m.get("id") == request_id)
        return int(reply["pid"])

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_for(self, wanted: Any, timeout: float = 30.0) -> dict[str, Any]:
        """The first message (seen already, or arriving within ``timeout``) that matches."""
        deadline = time.monotonic() + timeout
        for message in self._messages(deadline):
            if wanted(message):
                return message
        raise AssertionError(f"no such message within {timeout}s; saw {self.messages}")

    def exit_status(self, pid: int) -> int:
        return int(self.wait_for(lambda m: m.get("exit") == pid)["status"])

    def _messages(self, deadline: float) -> Iterator[dict[str, Any]]:
        yield from list(self.messages)
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._pending += chunk
            *lines, self._pending = self._pending.split(b"\n")
            # Every line on stdout is protocol (JSON). Keep them all before yielding any: a
            # caller that stops at the first match must not lose the rest of the chunk.
            fresh = [orjson.loads(line) for line in lines]
            self.messages.extend(fresh)
            yield from fresh

    def wait_for_stderr(self, needle: str, timeout: float = 30.0) -> None:
        """Read the zygote's (and its children's) stderr until ``needle`` shows."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        while needle.encode() not in self._stderr:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"{needle!r} not on stderr within {timeout}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"stderr closed without {needle!r}")
            self._stderr += chunk

    def close(self) -> tuple[int, str]:
        """Close stdin (the supervisor is gone): returns the exit status and stderr."""
        _, stderr = self.proc.communicate(timeout=30)  # closes stdin first
        return self.proc.returncode, (self._stderr + stderr).decode()


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    try:
        yield z
    finally:
        if z.proc.poll() is None:
            z.proc.kill()
            z.proc.wait()


def test_a_usage_error_reaches_the_child_exit_status_and_stderr(zygote: Zygote) -> None:
    pid = zygote.request(["--shard-count", "1"])
    assert zygote.exit_status(pid) == 2
    code, stderr = zygote.close()
    assert code == 0
    assert "the following arguments are required: --shard-id" in stderr


def test_help_goes_to_stderr_not_into_the_reply_channel(zygote: Zygote) -> None:
    pid = zygote.request(["--help"])
    assert zygote.exit_status(pid) == 0
    # The zygote still answers: its stdout was never interleaved with the help text.
    second = zygote.request(["--shard-count", "1"])
    assert zygote.exit_status(second) == 2
    _, stderr = zygote.close()
    assert "usage: python -m shards" in stderr


def test_an_unreadable_ca_file_is_named_and_exits_as_a_usage_error(
    zygote: Zygote, tmp_path: Path
) -> None:
    missing = tmp_path / "missing-ca.pem"
    pid = zygote.request([*VALID, "--ca-file", str(missing)], {"DISCORD_TOKEN": "x"})
    assert zygote.exit_status(pid) == 2
    _, stderr = zygote.close()
    assert f"cannot use --ca-file {missing}" in stderr


def test_a_child_loses_the_variables_its_request_unsets() -> None:
    # The zygote's own environment holds a token; the request removes it from the child's.
    zygote = Zygote({**os.environ, "DISCORD_TOKEN": "a.b.c"})
    try:
        pid = zygote.request(VALID, unset=["DISCORD_TOKEN"])
        assert zygote.exit_status(pid) == 2
        _, stderr = zygote.close()
        assert "no token: set the DISCORD_TOKEN environment variable" in stderr
    finally:
        zygote.proc.kill()
        zygote.proc.wait()


CONNECTING = [*VALID, "--token-env", "SHARDLINE_TEST_TOKEN", "--log-level", "info"]


def test_a_child_gets_the_variables_its_request_sets(zygote: Zygote) -> None:
    # With a token the shard goes on to connect (it logs that) instead of exiting 2.
    assert os.environ.get("SHARDLINE_TEST_TOKEN") is None
    zygote.request(CONNECTING, env={"SHARDLINE_TEST_TOKEN": "a.b.c"})
    zygote.wait_for_stderr("msg=connecting")
    code, stderr = zygote.close()  # ends the zygote, which stops its children
    assert code == 0
    assert "no token" not in stderr


def test_a_child_keeps_the_zygotes_environment_where_its_request_says_nothing() -> None:
    zygote = Zygote({**os.environ, "SHARDLINE_TEST_TOKEN": "a.b.c"})
    try:
        zygote.request(CONNECTING, env={"SHARDLINE_OTHER": "1"})
        zygote.wait_for_stderr("msg=connecting")
        code, stderr = zygote.close()
        assert code == 0
        assert "no token" not in stderr
    finally:
        zygote.proc.kill()
        zygote.proc.wait()


def test_requests_that_arrive_together_are_forked_each_as_its_own_shard() -> None:
    # Both lines in one write: the zygote prepares both before it forks either, and each
    # child must still log as itself, not as the last one prepared.
    zygote = Zygote({**os.environ, "SHARDLINE_TEST_TOKEN": "a.b.c"})
    try:
        lines = b""
        for shard in (0, 1):
            argv = [*CONNECTING]
            argv[argv.index("--shard-id") + 1] = str(shard)
            argv[argv.index("--shard-count") + 1] = "2"
            lines += orjson.dumps({"id": 10 + shard, "argv": argv}) + b"\n"
        zygote.write(lines)
        pids = {zygote.wait_for(lambda m, i=i: m.get("id") == i)["pid"] for i in (10, 11)}
        assert len(pids) == 2
        zygote.wait_for_stderr("id=0 msg=connecting")
        zygote.wait_for_stderr("id=1 msg=connecting")
        code, _ = zygote.close()
        assert code == 0
    finally:
        zygote.proc.kill()
        zygote.proc.wait()


def test_a_malformed_request_is_answered_and_the_zygote_goes_on(zygote: Zygote) -> None:
    zygote.write(b"{not json\n")
    error = zygote.wait_for(lambda m: "error" in m)
    assert error["id"] is None
    assert error["error"].startswith("bad request")
    pid = zygote.request(["--shard-count", "1"])
    assert zygote.exit_status(pid) == 2
