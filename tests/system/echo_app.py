"""An application (run by the supervisor as an ``[[apps]]`` process) that serves Echo."""

from __future__ import annotations

import os

from ipc.client import Client, CommandError
from ipc.messages import ErrorCode, ErrorReply
from tests.system.echo_commands import Echo, Echoed


async def main(client: Client) -> None:
    @client.serve(Echo)
    async def echo(command: Echo) -> Echoed:
        if command.text == "refuse":
            raise CommandError("refused", ErrorReply.of(ErrorCode.UNAVAILABLE, "not today"))
        if command.text == "crash":
            raise RuntimeError("the handler broke")
        return Echoed(text=command.text.upper(), pid=os.getpid())

    await client.wait_closed()
