"""Hostile application commands against a running fleet: each gets one reply naming the
fault, and nothing malformed reaches Discord (which would close the shard with 4002)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import zmq
import zmq.asyncio

from tests.shards.helpers import eventually
from tests.system.test_supervisor import all_ready, app, emulator, fleet

pytestmark = pytest.mark.slow


async def test_bad_commands_are_refused_with_the_field_named(tmp_path: Path) -> None:
    async with emulator(shards=2) as emu, fleet(emu, tmp_path) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        async with app(sup) as client:
            reply = await client.request("UPDATE_PRESENCE", [1, 2], {"shard": 1})
            assert not reply["ok"] and "<body>" in reply["error"] and "not sent" in reply["error"]
            reply = await client.request(
                "UPDATE_PRESENCE", {"status": "online", "afk": "yes"}, {"shard": 1}
            )
            assert "'afk'" in reply["error"]
            reply = await client.request(
                "UPDATE_VOICE_STATE", {"guild_id": "abc", "channel_id": None}
            )
            assert "'guild_id' must be a snowflake" in reply["error"]
            reply = await client.request("shardline.voice.join", {"guild_id": "abc"})
            assert "'guild_id' must be a snowflake" in reply["error"]
            assert reply["code"] == "invalid"
            reply = await client.request("REQUEST_GUILD_MEMBERS", {"query": ""}, {"guild_id": "x"})
            assert not reply["ok"] and "guild_id" in reply["error"]
            reply = await client.request("IDENTIFY", {"token": "t"}, {"shard": 0})
            assert "not a gateway command an app may send" in reply["error"]
            reply = await client.request("X" * 10_000_000, {})
            assert not reply["ok"] and len(reply["error"]) < 300
            reply = await client.request("shardline.restart", {"shard": "0"})
            assert not reply["ok"]
            reply = await client.request("shardline.client_stats", {"name": [1]})
            assert not reply["ok"]
            # A good command still goes through, and the shards never saw the bad ones.
            reply = await client.request(
                "UPDATE_PRESENCE", {"status": "idle", "activities": [], "afk": False}, {"shard": 1}
            )
            assert (reply["ok"], reply["routed"]) == (True, "shard:1")
            await emu.wait_until(lambda: bool(emu.received(1, op=3)))
        assert [r.d["status"] for r in emu.received(1, op=3)] == ["idle"]
        assert not emu.received(0, op=3) and not emu.received(0, op=2)[1:]
        assert all_ready(sup)  # no shard was disconnected


async def test_every_request_gets_exactly_one_reply(tmp_path: Path) -> None:
    async with emulator(shards=1) as emu, fleet(emu, tmp_path) as sup:
        await eventually(lambda: all_ready(sup), timeout=30)
        ctx = zmq.asyncio.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(sup.endpoints.commands)
        try:
            for frames in (
                [b"only-an-id"],
                [b"id", b"shardline.status"],
                [b"1", b"a", b"b", b"c", b"d", b"e"],
            ):
                await dealer.send_multipart(frames)
                reply = await dealer.recv_multipart()
                assert reply[0] == frames[0]
                answer = orjson.loads(reply[1])
                assert "a request is 3 or 4 frames" in answer["error"]
                assert answer["code"] == "malformed"
            # the options frame may be left out; an empty body is {}
            for frames in ([b"3", b"shardline.status", b"{}"], [b"4", b"shardline.status", b""]):
                await dealer.send_multipart(frames)
                reply = await dealer.recv_multipart()
                answer = orjson.loads(reply[1])
                assert reply[0] == frames[0] and answer["ok"] and "status" in answer
            await dealer.send_multipart([b"7", b"shardline.status", b"{not json", b"{}"])
            reply = await dealer.recv_multipart()
            assert reply[0] == b"7" and "not JSON" in orjson.loads(reply[1])["error"]
        finally:
            dealer.close(linger=0)
            ctx.term()
