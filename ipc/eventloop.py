"""How a shardline process runs its one event loop: on uvloop where it is installed (faster
I/O and timers), else on asyncio's own loop; and how it gives back memory after a burst."""

from __future__ import annotations

import asyncio
import ctypes
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "trim_memory"]

try:
    _libc: Any = ctypes.CDLL("libc.so.6")
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc
    _libc = None


def trim_memory(collect: bool = True) -> None:
    """Hand memory freed after a burst (a startup's GUILD_CREATEs, a drained backlog) back
    to the system, instead of keeping the peak of the busiest minute for good."""
    if collect:
        gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh loop and return its result."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
