"""How a shardline process runs its one event loop: on uvloop where it is installed (faster
I/O and timers), else on asyncio's own loop; and how it gives back memory after a burst."""

from __future__ import annotations

import asyncio
import ctypes
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["one_malloc_arena", "run", "trim_memory"]

try:
    _libc: Any = ctypes.CDLL("libc.so.6")
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
    _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
except (OSError, AttributeError):  # not glibc
    _libc = None
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def trim_memory(collect: bool = True) -> None:
    """Hand memory freed after a burst (a startup's GUILD_CREATEs, a drained backlog) back
    to the system, instead of keeping the peak of the busiest minute for good."""
    if collect:
        gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)


def one_malloc_arena() -> None:
    """Have every thread of this process allocate from one glibc arena. By default each
    thread that allocates gets its own (up to 8 per core), and after a burst each keeps
    what it freed: the supervisor's bus thread, its event loop and ZeroMQ's I/O thread
    held ~3 MB more at the peak of a 100,000-event burst (docs/benchmarks.md). Call it
    before starting threads."""
    if _libc is not None:
        _libc.mallopt(_M_ARENA_MAX, 1)


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh loop and return its result."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
