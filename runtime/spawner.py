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

    async def renew(self) -> None:
        """Every spawn runs the code on disk already."""

    async def close_retired(self) -> None:
        pass

    async def close(self) -> None:
        pass


class _Zygote:
    """One zygote process, the shards it forked and the spawns it has yet to answer."""

    def __init__(self, proc: asyncio.subprocess.Process, env: dict[str, str]) -> None:
        self.proc = proc
        self.env = env  # its own environment: a spawn sends only what differs from it
        self.children: dict[int, ChildHandle] = {}
        self.early_exits: dict[int, int] = {}
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                message = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if "exit" in message:
                pid, status = int(message["exit"]), int(message["status"])
                handle = self.children.pop(pid, None)
                if handle is None:
                    self.early_exits[pid] = status
                else:
                    handle._set_exit(status)
            else:
                future = self.replies.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
        # The zygote is gone, and its children with it (they die with their parent).
        for handle in list(self.children.values()):
            handle._set_exit(-signal.SIGKILL)
        self.children.clear()
        for future in self.replies.values():
            if not future.done():
                future.set_result({"error": "the zygote exited"})
        self.replies.clear()

    async def close(self) -> None:
        """Close its stdin: it ends, and its children with it."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class ZygoteSpawner:
    def __init__(self, python: str, preexec: Callable[[], None]) -> None:
        self.python = python
        self.preexec = preexec
        self._zygote: _Zygote | None = None
        self._retired: list[_Zygote] = []  # older zygotes, kept while their shards run
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def _ensure(self) -> _Zygote:
        zygote = self._zygote
        if zygote is None or zygote.proc.returncode is not None:
            env = dict(os.environ)
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "shards.zygote",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                preexec_fn=self.preexec,
                start_new_session=True,
            )
            zygote = self._zygote = _Zygote(proc, env)
        return zygote

    @property
    def zygote_pid(self) -> int | None:
        """The zygote new shards fork from (None before the first spawn)."""
        return self._zygote.proc.pid if self._zygote is not None else None

    async def renew(self) -> None:
        """Shards spawned from now on fork from a fresh zygote, which imports shardline's
        code as it is on disk now (a new version: a rolling restart); the current zygote
        stays, with the shards it forked, until :meth:`close_retired`."""
        async with self._lock:
            if self._zygote is not None:
                self._retired.append(self._zygote)
                self._zygote = None

    async def close_retired(self) -> None:
        """End the older zygotes (their shards were all replaced)."""
        retired, self._retired = self._retired, []
        for zygote in retired:
            await zygote.close()

    async def spawn(self, argv: list[str], env: dict[str, str]) -> Process:
        async with self._lock:
            zygote = await self._ensure()
            assert zygote.proc.stdin is not None
            request_id = next(self._ids)
            reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            zygote.replies[request_id] = reply
            base = zygote.env  # the zygote's own: send only what differs from it
            request = {
                "id": request_id,
                "argv": argv,
                "env": {k: v for k, v in env.items() if base.get(k) != v},
                "unset": [k for k in base if k not in env],
            }
            zygote.proc.stdin.write(orjson.dumps(request) + b"\n")
            await zygote.proc.stdin.drain()
        # The reply is awaited outside the lock, so that shards started together reach the
        # zygote together: it prepares a batch before forking it (shards/zygote.py says why).
        answer = await asyncio.wait_for(reply, 30)
        if "pid" not in answer:
            raise RuntimeError(f"the zygote could not fork a shard: {answer.get('error')}")
        handle = ChildHandle(int(answer["pid"]))
        zygote.children[handle.pid] = handle
        early = zygote.early_exits.pop(handle.pid, None)
        if early is not None:
            handle._set_exit(early)
        return handle

    async def close(self) -> None:
        await self.close_retired()
        if self._zygote is not None:
            await self._zygote.close()
