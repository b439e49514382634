"""The emulator's gateway rules, one by one, driven by a plain websocket client."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import zlib

import orjson
import pytest
from backports.zstd import ZstdDecompressor

from emulator import Emulator, EmulatorConfig, GatewayRules, WorldConfig, shard_for
from emulator.feed import MIX
from tests.emulator.client import TOKEN, PlainClient

GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8


def config(**rules: object) -> EmulatorConfig:
    world = WorldConfig(guilds=int(rules.pop("guilds", 12)), large_share=0.0)  # type: ignore[call-overload]
    return EmulatorConfig(rules=GatewayRules(identify_interval=0.0, **rules), world=world)  # type: ignore[arg-type]


async def test_hello_then_ready_then_guild_creates_for_this_shard_only() -> None:
    async with Emulator(config(guilds=30)) as emu:
        seen: dict[int, set[int]] = {}
        for shard in range(3):
            client = await PlainClient.open(emu.gateway_url, compress="zlib-stream")
            ready = await client.hello_and_ready((shard, 3))
            d = ready["d"]
            assert d["session_id"] and d["resume_gateway_url"].startswith("ws://")
            assert d["shard"] == [shard, 3]
            assert ready["s"] == 1
            expected = {g for g in emu.world.guild_ids if shard_for(g, 3) == shard}
            assert {int(g["id"]) for g in d["guilds"]} == expected
            got = set()
            for seq in range(2, 2 + len(expected)):
                payload = await client.recv()
                assert (payload["op"], payload["t"], payload["s"]) == (0, "GUILD_CREATE", seq)
                got.add(int(payload["d"]["id"]))
            assert got == expected
            seen[shard] = got
            await client.close()
        assert set().union(*seen.values()) == set(emu.world.guild_ids)
        assert sum(len(v) for v in seen.values()) == 30


async def test_guild_create_carries_the_full_shape() -> None:
    cfg = EmulatorConfig(
        rules=GatewayRules(identify_interval=0.0),
        world=WorldConfig(guilds=4, large_share=0.5, large_members=400),
    )
    async with Emulator(cfg) as emu:
        client = await PlainClient.open(emu.gateway_url)
        await client.hello_and_ready((0, 1), intents=GUILDS | GUILD_PRESENCES, large_threshold=250)
        large_seen = small_seen = False
        for _ in range(4):
            d = (await client.recv())["d"]
            for key in (
                "roles",
                "channels",
                "members",
                "voice_states",
                "presences",
                "threads",
                "stage_instances",
                "guild_scheduled_events",
                "soundboard_sounds",
                "emojis",
                "stickers",
                "features",
                "joined_at",
                "member_count",
                "owner_id",
                "afk_timeout",
                "verification_level",
                "premium_tier",
                "nsfw_level",
                "preferred_locale",
                "system_channel_flags",
                "mfa_level",
            ):
                assert key in d, key
            assert d["roles"][0]["id"] == d["id"]  # @everyone shares the guild's id
            assert all(isinstance(m["user"]["id"], str) for m in d["members"])
            if d["large"]:
                large_seen = True
                assert d["member_count"] == 401
                online = len(d["members"])
                assert online > 1 and online < 401  # the bot and the online members only
                assert len(d["presences"]) == len(d["members"]) - 1
            else:
                small_seen = True
                assert len(d["members"]) == d["member_count"]
        assert large_seen and small_seen


@pytest.mark.parametrize(
    ("identify", "rules", "code"),
    [
        ({"token": "wrong"}, {}, 4004),
        ({"shard": [2, 2]}, {}, 4010),
        ({"shard": [0, 0]}, {}, 4010),
        ({"intents": 1 << 30}, {}, 4013),
        ({"intents": GUILDS | GUILD_MEMBERS}, {"enabled_privileged_intents": 0}, 4014),
        ({"shard": [0, 1]}, {"max_guilds_per_shard": 5}, 4011),
    ],
)
async def test_identify_validation_close_codes(
    identify: dict[str, object], rules: dict[str, object], code: int
) -> None:
    async with Emulator(config(**rules)) as emu:
        client = await PlainClient.open(emu.gateway_url)
        await client.recv()
        d = {"token": TOKEN, "intents": GUILDS, "properties": {}, "shard": [0, 1], **identify}
        await client.send(2, d)
        assert await client.close_code() == code


async def test_disallowed_intents_reason_names_the_intent() -> None:
    async with Emulator(config(enabled_privileged_intents=0)) as emu:
        client = await PlainClient.open(emu.gateway_url)
        await client.recv()
        await client.identify(intents=GUILDS | (1 << 15))
        await client.close_code()
        assert client.ws.close_reason is not None and "MESSAGE_CONTENT" in client.ws.close_reason


@pytest.mark.parametrize(
    ("query", "code"), [("v=9&encoding=json", 4012), ("v=10&encoding=etf", 4002)]
)
async def test_connection_query_is_checked(query: str, code: int) -> None:
    async with Emulator(config()) as emu:
        client = await PlainClient.open(emu.gateway_url, query=query)
        assert await client.close_code() == code


async def test_protocol_violations_close_with_their_codes() -> None:
    async with Emulator(config()) as emu:
        cases = [
            (lambda c: c.send(99, None), 4001),
            (lambda c: c.ws.send("{not json"), 4002),
            (lambda c: c.send(3, {"status": "online", "pad": "x" * 5000}), 4002),
            (lambda c: c.send(4, {"guild_id": "1", "channel_id": None}), 4003),
        ]
        for action, code in cases:
            client = await PlainClient.open(emu.gateway_url)
            await client.recv()
            await action(client)
            assert await client.close_code() == code
        client = await PlainClient.open(emu.gateway_url)
        await client.hello_and_ready()
        await client.identify()
        assert await client.close_code() == 4005


async def test_send_limit_closes_4008() -> None:
    async with Emulator(config(send_limit=5, send_window=60.0)) as emu:
        client = await PlainClient.open(emu.gateway_url)
        await client.hello_and_ready()
        for _ in range(5):  # identify was the first of six
            await client.send(1, None)
        assert await client.close_code() == 4008
        assert len(emu.received()) == 5  # the sixth was refused, not processed


async def test_heartbeats_are_acked_and_zombie_mode_stops_acks() -> None:
    async with Emulator(config()) as emu:
        client = await PlainClient.open(emu.gateway_url)
        await client.hello_and_ready(intents=0)
        await client.send(1, 1)
        assert (await client.recv())["op"] == 11
        assert emu.zombie(0) == 1
        await client.send(1, 1)
        await emu.request_heartbeat(0)  # the next frame is the op 1, not an ACK
        assert (await client.recv())["op"] == 1


async def test_missing_heartbeats_close_4009() -> None:
    async with Emulator(config(heartbeat_interval_ms=200)) as emu:
        client = await PlainClient.open(emu.gateway_url)
        await client.recv()
        assert await client.close_code() == 4009


async def test_resume_replays_missed_dispatches_then_resumed() -> None:
    async with Emulator(config(guilds=3)) as emu:
        client = await PlainClient.open(emu.gateway_url, compress="zlib-stream")
        ready = await client.hello_and_ready()
        last = ready["s"]
        for _ in range(3):
            last = (await client.recv())["s"]
        session_id = ready["d"]["session_id"]
        await client.close(4000)
        await emu.wait_until(lambda: not emu.sessions(0)[0].connection)
        for _ in range(4):
            await emu.message(emu.world.guild_ids[0], "missed")
        resumed = await PlainClient.open(ready["d"]["resume_gateway_url"], compress="zlib-stream")
        await resumed.recv()
        await resumed.send(6, {"token": TOKEN, "session_id": session_id, "seq": last})
        got = await resumed.recv_until("RESUMED")
        assert [p["s"] for p in got] == list(range(last + 1, last + 6))
        assert [p["t"] for p in got] == ["MESSAGE_CREATE"] * 4 + ["RESUMED"]
        assert emu.state()["connections"][0]["path"].startswith("/resume")


async def test_resume_failures() -> None:
    async with Emulator(config()) as emu:
        client = await PlainClient.open(emu.gateway_url)
        ready = await client.hello_and_ready()
        session_id = ready["d"]["session_id"]
        await client.close(4000)
        await emu.wait_until(lambda: not emu.sessions(0)[0].connection)
        # a seq the session never reached: 4007, and the session is gone
        bad = await PlainClient.open(emu.gateway_url)
        await bad.recv()
        await bad.send(6, {"token": TOKEN, "session_id": session_id, "seq": 10_000})
        assert await bad.close_code() == 4007
        again = await PlainClient.open(emu.gateway_url)
        await again.recv()
        await again.send(6, {"token": TOKEN, "session_id": session_id, "seq": 1})
        assert await again.recv() == {"op": 9, "d": False, "s": None, "t": None}
        # an unknown session: op 9 false
        unknown = await PlainClient.open(emu.gateway_url)
        await unknown.recv()
        await unknown.send(6, {"token": TOKEN, "session_id": "nope", "seq": 1})
        assert (await unknown.recv())["d"] is False


async def test_close_1000_ends_the_session() -> None:
    async with Emulator(config()) as emu:
        client = await PlainClient.open(emu.gateway_url)
        ready = await client.hello_and_ready()
        await client.close(1000)
        await emu.wait_until(lambda: emu.sessions(0)[0].invalid)
        again = await PlainClient.open(emu.gateway_url)
        await again.recv()
        await again.send(6, {"token": TOKEN, "session_id": ready["d"]["session_id"], "seq": 1})
        assert (await again.recv())["op"] == 9


async def test_identify_buckets_and_session_start_budget() -> None:
    rules = GatewayRules(identify_interval=0.4, max_concurrency=2, session_start_remaining=10)
    async with Emulator(EmulatorConfig(rules=rules, world=WorldConfig(guilds=4))) as emu:
        clients = []
        for shard in (0, 1):  # two buckets: both at once
            client = await PlainClient.open(emu.gateway_url)
            await client.hello_and_ready((shard, 4), intents=0)
            clients.append(client)
        late = await PlainClient.open(emu.gateway_url)
        await late.recv()
        await late.identify((2, 4), intents=0)  # bucket 0 again, too soon
        assert await late.recv() == {"op": 9, "d": False, "s": None, "t": None}
        assert [r.outcome for r in emu.gateway.identifies] == ["ready", "ready", "rate_limited"]
        assert emu.rules.session_start_remaining == 8
        # The rule under test is time itself: after the interval, bucket 0 opens again.
        await asyncio.sleep(0.4)
        await late.identify((2, 4), intents=0)
        assert (await late.recv())["t"] == "READY"
        ready_times = [r.at for r in emu.gateway.identifies if r.bucket == 0 and r.accepted]
        assert ready_times[1] - ready_times[0] >= 0.4
        assert emu.rules.session_start_remaining == 7


async def test_exhausted_session_start_limit_fails_authentication() -> None:
    rules = GatewayRules(identify_interval=0.0, session_start_remaining=1)
    async with Emulator(EmulatorConfig(rules=rules)) as emu:
        first = await PlainClient.open(emu.gateway_url)
        await first.hello_and_ready()
        second = await PlainClient.open(emu.gateway_url)
        await second.recv()
        await second.identify()
        assert await second.close_code() == 4004


async def test_zlib_stream_framing_uses_one_context_and_sync_flush() -> None:
    async with Emulator(config(guilds=5)) as emu:
        client = await PlainClient.open(emu.gateway_url, compress="zlib-stream")
        await client.hello_and_ready()
        for _ in range(5):
            await client.recv()
        assert len(client.raw_messages) == 7
        assert all(m.endswith(b"\x00\x00\xff\xff") for m in client.raw_messages)
        # A second context cannot read a later message alone: the context spans the stream.
        with pytest.raises(zlib.error):
            zlib.decompressobj().decompress(client.raw_messages[-1])


async def test_zstd_stream_one_payload_per_message() -> None:
    async with Emulator(config(guilds=5)) as emu:
        client = await PlainClient.open(emu.gateway_url, compress="zstd-stream")
        await client.hello_and_ready()
        for _ in range(5):
            await client.recv()
        decoder = ZstdDecompressor()
        payloads = [orjson.loads(decoder.decompress(m)) for m in client.raw_messages]
        assert [p["op"] for p in payloads] == [10, 0, 0, 0, 0, 0, 0]


async def test_member_chunks_nonce_and_rate_limit() -> None:
    cfg = EmulatorConfig(
        rules=GatewayRules(identify_interval=0.0),
        world=WorldConfig(guilds=1, large_share=1.0, large_members=2500),
    )
    async with Emulator(cfg) as emu:
        client = await PlainClient.open(emu.gateway_url)
        await client.hello_and_ready(intents=GUILDS | GUILD_MEMBERS)
        guild = await client.recv()
        gid = guild["d"]["id"]
        await client.send(8, {"guild_id": gid, "query": "", "limit": 0, "nonce": "n1"})
        chunks = [await client.recv() for _ in range(3)]
        assert [c["d"]["chunk_index"] for c in chunks] == [0, 1, 2]
        assert {c["d"]["chunk_count"] for c in chunks} == {3}
        assert {c["d"]["nonce"] for c in chunks} == {"n1"}
        assert sum(len(c["d"]["members"]) for c in chunks) == 2501
        await client.send(8, {"guild_id": gid, "query": "", "limit": 0, "nonce": "n2"})
        limited = await client.recv()
        assert limited["t"] == "RATE_LIMITED"
        assert limited["d"]["opcode"] == 8 and limited["d"]["meta"]["nonce"] == "n2"
        assert limited["d"]["retry_after"] > 0
        known = chunks[0]["d"]["members"][5]["user"]["id"]
        await client.send(8, {"guild_id": gid, "user_ids": [known, "42"], "nonce": "n3"})
        by_id = (await client.recv())["d"]
        assert [m["user"]["id"] for m in by_id["members"]] == [known]
        assert by_id["not_found"] == ["42"]


async def test_voice_state_update_is_answered_with_both_events() -> None:
    async with Emulator(config(guilds=1)) as emu:
        client = await PlainClient.open(emu.gateway_url)
        await client.hello_and_ready()
        gid = emu.world.guild_ids[0]
        await client.recv()  # GUILD_CREATE
        channel = emu.world.voice_channel_id(gid)
        await client.send(
            4,
            {
                "guild_id": str(gid),
                "channel_id": str(channel),
                "self_mute": False,
                "self_deaf": True,
            },
        )
        state, server = await client.recv(), await client.recv()
        assert state["t"] == "VOICE_STATE_UPDATE"
        assert state["d"]["channel_id"] == str(channel) and state["d"]["self_deaf"] is True
        assert state["d"]["user_id"] == str(emu.world.bot_id) and state["d"]["session_id"]
        assert server["t"] == "VOICE_SERVER_UPDATE"
        assert server["d"]["guild_id"] == str(gid) and server["d"]["token"]
        assert server["d"]["endpoint"]
        await client.send(4, {"guild_id": str(gid), "channel_id": None})
        leave = await client.recv()
        assert leave["t"] == "VOICE_STATE_UPDATE" and leave["d"]["channel_id"] is None


async def test_dms_go_to_shard_zero_and_guild_messages_to_their_shard() -> None:
    async with Emulator(config(guilds=8)) as emu:
        clients = []
        for shard in (0, 1):
            client = await PlainClient.open(emu.gateway_url)
            await client.hello_and_ready((shard, 2), intents=0)
            clients.append(client)
        await emu.message(None, "a dm")
        target = next(g for g in emu.world.guild_ids if shard_for(g, 2) == 1)
        await emu.message(target, "to shard one")
        dm = await clients[0].recv()
        assert dm["d"]["content"] == "a dm" and "guild_id" not in dm["d"]
        msg = await clients[1].recv()
        assert msg["d"]["content"] == "to shard one" and msg["d"]["guild_id"] == str(target)
        assert [s for s, t in emu.sessions(0)[0].sent] == [1, 2]  # READY, the DM
        assert [t for s, t in emu.sessions(1)[0].sent] == ["READY", "MESSAGE_CREATE"]


async def test_control_reconnect_invalid_session_close_and_drop() -> None:
    async with Emulator(config()) as emu:
        client = await PlainClient.open(emu.gateway_url)
        await client.hello_and_ready(intents=0)
        assert await emu.reconnect(0) == 1
        assert (await client.recv())["op"] == 7
        await emu.invalid_session(0, resumable=True)
        assert await client.recv() == {"op": 9, "d": True, "s": None, "t": None}
        await emu.close_shard(0, 4000, "test")
        assert await client.close_code() == 4000
        other = await PlainClient.open(emu.gateway_url)
        await other.hello_and_ready(intents=0)
        assert emu.drop(0) == 1
        assert await other.close_code() is None  # no close frame: the TCP connection died
        assert [r.op for r in emu.received(0)] == [2, 2]


async def test_stream_sends_count_dispatches() -> None:
    async with Emulator(config(guilds=2)) as emu:
        client = await PlainClient.open(emu.gateway_url, compress="zlib-stream")
        await client.hello_and_ready(intents=0)
        sent = await emu.stream(0, rate=5000, count=200)
        got = [await client.recv() for _ in range(200)]
        assert sent == 200
        assert [p["s"] for p in got] == list(range(2, 202))
        sizes = [len(orjson.dumps(p["d"])) for p in got]  # Discord-shaped: ~1.3 KB
        assert 900 <= sum(sizes) / len(sizes) <= 1700 and max(sizes) > 1500


@pytest.mark.parametrize("compress", ["", "zstd-stream"])
async def test_stream_batches_arrive_whole_and_in_order(compress: str) -> None:
    # Dispatches due together go out in one write: every frame must still parse on its own.
    async with Emulator(config(guilds=2)) as emu:
        client = await PlainClient.open(emu.gateway_url, compress=compress)
        await client.hello_and_ready(intents=0)
        sent = await emu.stream(0, rate=50_000, count=500)
        got = [await client.recv() for _ in range(500)]
        assert sent == 500
        assert [p["s"] for p in got] == list(range(2, 502))
        assert {p["t"] for p in got} == {"MESSAGE_CREATE"}
        assert emu.sessions(0)[0].buffer[-1][0] == 501  # kept for a resume


async def test_stream_to_a_dropped_connection_is_kept_for_the_resume() -> None:
    async with Emulator(config(guilds=2)) as emu:
        client = await PlainClient.open(emu.gateway_url, compress="zlib-stream")
        ready = await client.hello_and_ready(intents=0)
        assert emu.drop(0) == 1
        assert await emu.stream(0, rate=50_000, count=100) == 100
        again = await PlainClient.open(emu.gateway_url, compress="zlib-stream")
        assert (await again.recv())["op"] == 10
        await again.send(6, {"token": TOKEN, "session_id": ready["d"]["session_id"], "seq": 1})
        got = [await again.recv() for _ in range(101)]
        assert [p["s"] for p in got[:100]] == list(range(2, 102))
        assert got[100]["t"] == "RESUMED"


async def test_blast_sends_prepared_dispatches_in_order_and_keeps_them_for_replay() -> None:
    async with Emulator(config(guilds=2)) as emu:
        client = await PlainClient.open(emu.gateway_url, compress="zlib-stream")
        await client.hello_and_ready(intents=0)
        bodies = [orjson.dumps({"id": str(i), "content": "x" * i}) for i in range(300)]
        await emu.blast(0, bodies)
        got = [await client.recv() for _ in range(300)]
        assert [p["s"] for p in got] == list(range(2, 302))
        assert [p["d"]["content"] for p in got] == ["x" * i for i in range(300)]
        assert emu.sessions(0)[0].buffer[-1][0] == 301
        types = ["TYPING_START", "MESSAGE_UPDATE", "PRESENCE_UPDATE"]  # each its own type
        await emu.blast(0, bodies[:3], types)
        assert [(await client.recv())["t"] for _ in range(3)] == types


async def test_a_mixed_blast_sends_each_dispatch_as_its_own_type() -> None:
    """``POST /_emulator/blast {"kind": "mixed"}``: messages, typing, reactions, presences and
    edits, in order, each as the type it was drawn as (emulator/feed.py MIX)."""
    async with Emulator(config(guilds=2)) as emu:
        client = await PlainClient.open(emu.gateway_url, compress="zlib-stream")
        await client.hello_and_ready(intents=0)
        control = emu.rest_url.removesuffix("/api/v10") + "/_emulator/blast"
        body = json.dumps({"shard": 0, "count": 200, "kind": "mixed"}).encode()
        request = urllib.request.Request(control, data=body, method="POST")
        reply = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(request)))
        got = [await client.recv() for _ in range(200)]
        assert reply["count"] == 200 and reply["t"] == "mixed"
        assert {p["t"] for p in got} == {t for t, _ in MIX}
        assert all(p["t"] != "MESSAGE_UPDATE" or p["d"]["edited_timestamp"] for p in got)


async def test_several_sessions_of_one_shard_run_at_once_and_each_gets_its_guilds_events() -> None:
    """As Discord allows (zero-downtime resharding, handoffs): a second IDENTIFY for a shard
    leaves the first session running, and a guild's events reach both."""
    async with Emulator(config(guilds=4)) as emu:
        first = await PlainClient.open(emu.gateway_url)
        await first.hello_and_ready((0, 1))
        second = await PlainClient.open(emu.gateway_url)
        await second.hello_and_ready((0, 1))
        assert len([s for s in emu.sessions(0) if not s.invalid]) == 2
        guild = emu.world.guild_ids[0]
        await emu.message(guild, "to both")
        for client in (first, second):
            payload = await client.recv()
            while payload.get("t") != "MESSAGE_CREATE":
                payload = await client.recv()
            assert payload["d"]["content"] == "to both"


async def test_two_open_connections_of_one_shard_are_measured_as_an_overlap() -> None:
    """The yardstick for handoffs: how long two connections of one shard were open."""
    async with Emulator(config(guilds=3)) as emu:
        first = await PlainClient.open(emu.gateway_url)
        await first.hello_and_ready()
        assert emu.gateway.longest_overlap(0) == 0.0
        second = await PlainClient.open(emu.gateway_url)
        await second.hello_and_ready()  # a second session for shard 0: both open now
        await emu.wait_until(lambda: len(emu.sessions(0)) == 2)
        open_since = emu.gateway.longest_overlap(0)
        assert open_since > 0.0
        await first.close(1000)
        await emu.wait_until(lambda: len(emu.gateway.connections) == 1)
        closed = emu.gateway.longest_overlap(0)
        assert closed >= open_since  # measured up to the first one's close
        assert emu.gateway.longest_overlap(0) == closed  # and no longer growing
        await second.close(1000)
        await emu.wait_until(lambda: not emu.gateway.connections)
        third = await PlainClient.open(emu.gateway_url)  # one after the other: no overlap
        await third.hello_and_ready()
        assert emu.gateway.longest_overlap(0) == closed
        await third.close(1000)


async def test_large_bot_sharding_requires_a_multiple_and_growth_closes_4011() -> None:
    rules = GatewayRules(max_guilds_per_shard=6, shard_multiple=2, identify_interval=0.0)
    async with Emulator(
        EmulatorConfig(rules=rules, world=WorldConfig(guilds=10, large_share=0.0))
    ) as emu:
        assert emu.recommend_shards(3) == 4  # rounded up to the multiple
        odd = await PlainClient.open(emu.gateway_url)
        await odd.recv()  # HELLO
        await odd.identify(shard=(0, 3))
        assert await odd.close_code() == 4010  # 3 is not a multiple of 2
        clients = []
        for shard in range(2):
            client = await PlainClient.open(emu.gateway_url)
            await client.hello_and_ready(shard=(shard, 2))
            clients.append(client)
        seqs = [emu.world.message(g)["shardline_guild_seq"] for g in emu.world.guild_ids[:1] * 3]
        assert seqs == [1, 2, 3]  # each guild's messages numbered
        before = {s: len(emu.gateway.guilds_on(s, 2)) for s in range(2)}
        added = await emu.join_guilds(6)  # past 6 a shard
        assert len(emu.world.guild_ids) == 16 and len(added) == 6
        over = [s for s in range(2) if len(emu.gateway.guilds_on(s, 2)) > 6]
        assert over and all(before[s] <= 6 for s in range(2))
        for shard in over:
            assert await clients[shard].close_code() == 4011
            (session,) = emu.sessions(shard)
            assert session.invalid  # the session ended: a new count must identify
