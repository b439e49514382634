"""The emulator's generated messages are shaped like Discord's traffic (emulator/feed.py):
the mix of extras, their shapes, the sizes, and the same feed on every run."""

from __future__ import annotations

import random
import statistics

import orjson

from emulator.feed import MIX, SHAPES, presence_update, reaction_add, typing_start
from emulator.world import World, WorldConfig
from ipc.codec import decode_gateway_event
from ipc.events import MessageCreate, MessageUpdate, PresenceUpdate, TypingStart
from ipc.messages import UnknownDispatch


def feed(count: int, seed: int = 0) -> list[dict]:  # type: ignore[type-arg]
    world = World(WorldConfig(guilds=8, seed=seed, large_share=0.0))
    return [world.message(world.guild_ids[i % 8]) for i in range(count)]


def extras(d: dict) -> str:  # type: ignore[type-arg]
    if d.get("referenced_message"):
        return "reply"
    for key, name in (
        ("mentions", "mentions"),
        ("attachments", "attachments"),
        ("embeds", "embed"),
        ("sticker_items", "sticker"),
        ("components", "components"),
    ):
        if d.get(key):
            return name
    return "plain"


def test_about_a_fifth_of_messages_carry_replies_mentions_attachments_or_embeds() -> None:
    messages = feed(5000)
    counts: dict[str, int] = {}
    for d in messages:
        counts[extras(d)] = counts.get(extras(d), 0) + 1
    for name, share in SHAPES:
        assert abs(counts.get(name, 0) / 5000 - share) < 0.015, (name, counts)
    heavy = sum(counts.get(n, 0) for n in ("reply", "mentions", "attachments", "embed"))
    assert 0.15 < heavy / 5000 < 0.23
    sizes = [len(orjson.dumps(d)) for d in messages]
    assert 900 < statistics.mean(sizes) < 1600  # ~1.1 KB, as Discord's are
    assert statistics.median(sizes) < statistics.mean(sizes) < max(sizes) / 2  # a long tail
    text = "".join(d["content"] for d in messages)
    assert any(ord(c) > 0x2000 for c in text) and any(0x80 <= ord(c) < 0x800 for c in text)


def test_each_extra_has_the_shape_discord_gives_it() -> None:
    messages = feed(3000)
    reply = next(d for d in messages if extras(d) == "reply")
    assert reply["type"] == 19
    assert reply["message_reference"]["message_id"] == reply["referenced_message"]["id"]
    assert "member" not in reply["referenced_message"] and reply["referenced_message"]["author"]
    assert reply["mentions"][0]["id"] == reply["referenced_message"]["author"]["id"]
    mention = next(d for d in messages if extras(d) == "mentions")
    assert all("member" in m and "user" not in m["member"] for m in mention["mentions"])
    assert all(f"<@{m['id']}>" in mention["content"] for m in mention["mentions"])
    attachment = next(d for d in messages if extras(d) == "attachments")["attachments"][0]
    assert {"id", "filename", "size", "url", "proxy_url", "content_type"} <= set(attachment)
    embed = next(d for d in messages if extras(d) == "embed")["embeds"][0]
    assert {"type", "url", "title", "provider", "thumbnail"} <= set(embed)
    for d in messages[:50]:
        assert d["author"]["avatar"] is None or len(d["author"]["avatar"]) in (32, 34)
        assert d["member"]["roles"] and "user" not in d["member"]
        assert d["shardline_guild_seq"] >= 1


def test_the_feed_is_the_same_on_every_run_and_padded_on_request() -> None:
    assert feed(200) == feed(200)
    assert feed(50, seed=1) != feed(50)
    world = World(WorldConfig(guilds=2))
    padded = world.message(world.guild_ids[0], size=1024)
    assert 1000 <= len(orjson.dumps(padded)) <= 1100 and not padded["mentions"]


def test_the_other_hot_dispatches() -> None:
    world = World(WorldConfig(guilds=2))
    guild = world.guild_ids[0]
    rng = random.Random(1)
    user = world.user(world.user_id(guild, 1))
    member = world.member(guild, user, ["1"])
    typing = typing_start(rng, guild, 5, user, member, 1_780_000_000)
    assert typing["user_id"] == user["id"] and typing["member"]["user"] == user
    reaction = reaction_add(rng, guild, 5, 6, "7", member)
    assert reaction["emoji"]["name"] and reaction["message_id"] == "6"
    presences = [presence_update(rng, guild, user["id"]) for _ in range(50)]
    assert {p["status"] for p in presences} >= {"online", "idle", "offline"}
    assert any(p["activities"] for p in presences)


def test_a_mixed_feed_has_discords_proportions_and_decodes_typed() -> None:
    """The ``mixed`` blast's dispatches: each type in its share (feed.MIX), each read by
    its typed class (a reaction, which no class declares, kept whole)."""
    world = World(WorldConfig(guilds=8, large_share=0.0))
    events = [world.mixed(world.guild_ids[i % 8]) for i in range(4000)]
    counts: dict[str, int] = {}
    for t, _ in events:
        counts[t] = counts.get(t, 0) + 1
    for t, share in MIX:
        assert abs(counts[t] / len(events) - share) < 0.03, (t, counts[t])
    typed = {
        "MESSAGE_CREATE": MessageCreate,
        "MESSAGE_UPDATE": MessageUpdate,
        "TYPING_START": TypingStart,
        "PRESENCE_UPDATE": PresenceUpdate,
        "MESSAGE_REACTION_ADD": UnknownDispatch,
    }
    for t, d in events[:400]:
        event = decode_gateway_event(orjson.dumps({"op": 0, "t": t, "s": 1, "d": d}))
        assert isinstance(event, typed[t])
        if isinstance(event, MessageUpdate):  # an edit: the whole message, edited now
            assert event.content and event.raw["edited_timestamp"] and event.author.id
            assert event.raw["guild_id"] and event.raw["member"]
        elif isinstance(event, TypingStart):
            assert event.user_id and event.member is not None
