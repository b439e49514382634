"""Handlers chosen by an event's class: a handler for a base class receives every subclass, so
one handler for :class:`ipc.errors.ErrorEvent` is the catch-all for errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ipc.messages import Event

__all__ = ["HandlerTable"]

E = TypeVar("E", bound=Event)
Handler = Callable[[Any], Awaitable[None] | None]


class HandlerTable:
    """Registers handlers per event class and finds all that apply to an event (by MRO)."""

    def __init__(self) -> None:
        self._handlers: dict[type[Event], list[Handler]] = {}
        self._cache: dict[type[Event], tuple[Handler, ...]] = {}

    def add(self, cls: type[E], handler: Callable[[E], Awaitable[None] | None]) -> None:
        self._handlers.setdefault(cls, []).append(handler)
        self._cache.clear()

    def on(self, cls: type[E]) -> Callable[[Callable[[E], Any]], Callable[[E], Any]]:
        """Decorator form of :meth:`add`."""

        def register(handler: Callable[[E], Any]) -> Callable[[E], Any]:
            self.add(cls, handler)
            return handler

        return register

    def handlers_for(self, event: Event) -> tuple[Handler, ...]:
        cls = type(event)
        found = self._cache.get(cls)
        if found is None:
            found = tuple(h for klass in cls.__mro__ for h in self._handlers.get(klass, ()))
            self._cache[cls] = found
        return found

    def wants(self, cls: type[Event]) -> bool:
        return any(issubclass(cls, k) or issubclass(k, cls) for k in self._handlers)
