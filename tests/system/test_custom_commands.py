"""A command declared in a test module, served by an application process, sent from this
process: it gets its typed reply. Unknown and malformed commands get typed errors, and the
supervisor keeps running."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest
import zmq
import zmq.asyncio

from ipc.client import CommandError
from ipc.messages import ErrorCode
from ipc.requests import GetStatus, StatusReply
from runtime.config import parse_config
from tests.shards.helpers import eventually
from tests.system.echo_commands import Echo, Echoed
from tests.system.test_supervisor import all_ready, app, emulator, fleet_with

pytestmark = pytest.mark.slow


async def test_a_custom_command_is_served_by_an_app_and_answered_typed(tmp_path: Path) -> None:
    async with emulator(shards=1) as emu:
        config = parse_config(
            {
                "discord": {"rest_url": emu.rest_url},
                "ipc": {"runtime_dir": str(tmp_path)},
                "apps": [{"module": "tests.system.echo_app", "processes": 1}],
            },
            "<test>",
        )
        async with fleet_with(config, emu, tmp_path) as sup, app(sup) as client:
            await eventually(lambda: all_ready(sup), timeout=30)

            async def served() -> bool:
                try:
                    await client.send(Echo(text="ping"))
                except CommandError as exc:
                    assert exc.reply is not None
                    assert exc.reply.error_code is ErrorCode.UNKNOWN_COMMAND  # not yet served
                    return False
                return True

            deadline = asyncio.get_running_loop().time() + 30
            while not await served():  # the app announces what it serves within 2 s
                assert asyncio.get_running_loop().time() < deadline, "testbot.echo never served"
                await asyncio.sleep(0.1)
            reply = await client.send(Echo(text="hello"))
            app_pid = sup.apps[0].proc.pid if sup.apps[0].proc else None
            assert isinstance(reply, Echoed)
            assert (reply.text, reply.pid) == ("HELLO", app_pid)
            assert reply.pid != os.getpid()  # answered by the app's process

            # The app checks the body against the class before its handler runs.
            bad = await client.request("testbot.echo", {"text": 5})
            assert (bad["ok"], bad["code"]) == (False, "invalid") and "'text'" in bad["error"]
            cases = [("refuse", ErrorCode.UNAVAILABLE), ("crash", ErrorCode.INTERNAL)]
            for text, code in cases:
                with pytest.raises(CommandError) as refused:
                    await client.send(Echo(text=text))
                assert refused.value.reply is not None
                assert refused.value.reply.error_code is code

            # Unknown and malformed requests: typed errors, and the fleet runs on.
            unknown = await client.request("nobody.serves.this", {})
            assert (unknown["ok"], unknown["code"]) == (False, "unknown_command")
            ctx = zmq.asyncio.Context()
            dealer = ctx.socket(zmq.DEALER)
            dealer.connect(sup.endpoints.commands)
            try:
                await dealer.send_multipart([b"9", b"testbot.echo", b"{oops", b"{}"])
                request_id, body = await dealer.recv_multipart()
                answer = orjson.loads(body)
                assert request_id == b"9" and answer["code"] == "malformed"
            finally:
                dealer.close(linger=0)
                ctx.term()
            status = await client.ask(GetStatus(), StatusReply)
            assert status.status["shards"][0]["state"] == "ready"
            assert all_ready(sup) and sup.apps[0].restarts == 0
