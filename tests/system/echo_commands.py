"""A custom command and its reply, declared the way a bot declares its own: a class each,
no registration anywhere else. Imported by the serving app and by the test that sends."""

from __future__ import annotations

from ipc.fields import InvalidFieldError, integer, string
from ipc.messages import Reply
from ipc.requests import Request


class Echoed(Reply):
    __slots__ = ()
    type_name = "testbot.echoed"
    text = string()
    pid = integer()


class Echo(Request):
    """Answered by the application process that serves it, in upper case."""

    __slots__ = ()
    type_name = "testbot.echo"
    reply_class = Echoed
    text = string()

    def check(self) -> None:
        if len(self.raw["text"]) > 100:
            raise InvalidFieldError("text", "is longer than 100 characters")
