"""How the supervisor starts shard processes: fork from a preloaded zygote, or exec afresh.

``fork`` (the default) asks ``python -m shards.zygote`` to fork each shard: the imports are
paid once and their pages shared (``bench/memory.py`` measures PSS per idle shard both ways).
``exec`` starts ``python -m shards`` as a new interpreter each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
from collections.abc import Callable
from typing import Any, Protocol

import orjson

__all__ = ["ChildHandle", "ExecSpawner", "Process", "ZygoteSpawner"]


class Process(Protocol):
    """What the supervisor needs of a child (``asyncio.subprocess.Process`` fits)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class ChildHandle:
    """A process forked by the zygote; its exit status arrives through the zygote."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def _set_exit(self, status: int) -> None:
        if not self._exited.done():
            self.returncode = status
            self._exited.set_result(status)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ExecSpawner:
    def __init__(self, python: str, preexec: Callable[[], None]) -> None:
        self.python = python
        self.preexec = preexec

    async def spawn(self, argv: list[str], env: dict[str, str]) -> Process:
        return await asyncio.create_subprocess_exec(
            self.python,
            "-m",
            "shards",
            *argv,
            env=env,
            preexec_fn=self.preexec,
            start_new_session=True,
        )

    async def close(self) -> None:
        pass


class ZygoteSpawner:
    def __init__(self, python: str, preexec: Callable[[], None]) -> None:
        self.python = python
        self.preexec = preexec
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._children: dict[int, ChildHandle] = {}
        self._early_exits: dict[int, int] = {}
        self._lock = asyncio.Lock()
        self._zygote_env: dict[str, str] = {}

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._zygote_env = dict(os.environ)
            self._proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "shards.zygote",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=self._zygote_env,
                preexec_fn=self.preexec,
                start_new_session=True,
            )
            self._reader = asyncio.get_running_loop().create_task(self._read(self._proc))
        return self._proc

    async def spawn(self, argv: list[str], env: dict[str, str]) -> Process:
        async with self._lock:
            proc = await self._ensure()
            assert proc.stdin is not None
            request_id = next(self._ids)
            reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._replies[request_id] = reply
            base = self._zygote_env  # the zygote's own: send only what differs from it
            request = {
                "id": request_id,
                "argv": argv,
                "env": {k: v for k, v in env.items() if base.get(k) != v},
                "unset": [k for k in base if k not in env],
            }
            proc.stdin.write(orjson.dumps(request) + b"\n")
            await proc.stdin.drain()
        # The reply is awaited outside the lock, so that shards started together reach the
        # zygote together: it prepares a batch before forking it (shards/zygote.py says why).
        answer = await asyncio.wait_for(reply, 30)
        if "pid" not in answer:
            raise RuntimeError(f"the zygote could not fork a shard: {answer.get('error')}")
        handle = ChildHandle(int(answer["pid"]))
        self._children[handle.pid] = handle
        early = self._early_exits.pop(handle.pid, None)
        if early is not None:
            handle._set_exit(early)
        return handle

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if "exit" in message:
                pid, status = int(message["exit"]), int(message["status"])
                handle = self._children.pop(pid, None)
                if handle is None:
                    self._early_exits[pid] = status
                else:
                    handle._set_exit(status)
            else:
                future = self._replies.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        # The zygote is gone, and its children with it (they die with their parent).
        for handle in list(self._children.values()):
            handle._set_exit(-signal.SIGKILL)
        self._children.clear()
        for future in self._replies.values():
            if not future.done():
                future.set_result({"error": "the zygote exited"})
        self._replies.clear()

    async def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
