"""Typed-decode throughput against plain ``orjson.loads`` on the same gateway payloads.

Candidates, each given the same bytes:
  orjson.loads      the floor: parse only, no types
  shardline         orjson + lazy typed views (what ipc.codec does), decode only
  shardline+read    the same, then reading author.id, content and guild_id
  eager slotted     orjson + building slotted dataclasses for every field up front
  msgspec           msgspec.json typed Structs (strict=False turns snowflake strings to ints)

Run: .venv/bin/python bench/decode.py [--seconds 1.0]
"""

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emulator.world import World, WorldConfig
from ipc.codec import decode_gateway_event


def payloads() -> dict[str, list[bytes]]:
    world = World(WorldConfig(guilds=20, large_share=0.1, large_members=5000))
    small = next(g for g in world.guild_ids if g not in world.large_guilds)
    large = next(iter(world.large_guilds))

    def frame(t: str, d: Any, s: int) -> bytes:
        return orjson.dumps({"op": 0, "d": d, "s": s, "t": t})

    messages = [frame("MESSAGE_CREATE", world.message(small, size=1024), i) for i in range(200)]
    guild = [
        frame("GUILD_CREATE", world.guild_create(large, large_threshold=250, presences=True), 1)
    ]
    typing = [
        frame(
            "TYPING_START",
            {"channel_id": "1", "guild_id": str(small), "user_id": "2", "timestamp": 1},
            i,
        )
        for i in range(200)
    ]
    return {"MESSAGE_CREATE ~1KB": messages, "GUILD_CREATE large": guild, "TYPING_START": typing}


# -- the eager alternative ------------------------------------------------------------------


@dataclass(slots=True)
class EagerUser:
    id: int
    username: str
    discriminator: str
    global_name: str | None
    avatar: str | None
    bot: bool


@dataclass(slots=True)
class EagerMember:
    user: EagerUser | None
    nick: str | None
    roles: list[int]
    joined_at: str | None


@dataclass(slots=True)
class EagerMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: EagerUser
    member: EagerMember | None
    content: str
    timestamp: str
    mentions: list[EagerUser]
    mention_roles: list[int]


def eager_user(d: dict[str, Any]) -> EagerUser:
    return EagerUser(
        int(d["id"]),
        d["username"],
        d["discriminator"],
        d.get("global_name"),
        d.get("avatar"),
        d.get("bot", False),
    )


def eager_member(d: dict[str, Any] | None) -> EagerMember | None:
    if d is None:
        return None
    user = d.get("user")
    return EagerMember(
        eager_user(user) if user else None,
        d.get("nick"),
        [int(r) for r in d.get("roles", [])],
        d.get("joined_at"),
    )


def eager_decode(data: bytes) -> Any:
    obj = orjson.loads(data)
    d = obj["d"]
    if obj.get("t") == "MESSAGE_CREATE":
        return EagerMessage(
            int(d["id"]),
            int(d["channel_id"]),
            int(d["guild_id"]) if d.get("guild_id") else None,
            eager_user(d["author"]),
            eager_member(d.get("member")),
            d["content"],
            d["timestamp"],
            [eager_user(u) for u in d.get("mentions", [])],
            [int(r) for r in d.get("mention_roles", [])],
        )
    if obj.get("t") == "GUILD_CREATE":
        return [eager_member(m) for m in d["members"]], d
    return d


def msgspec_decoder() -> Callable[[bytes], Any] | None:
    try:
        import msgspec
    except ImportError:
        return None

    class User(msgspec.Struct):
        id: int
        username: str
        discriminator: str
        global_name: str | None = None
        avatar: str | None = None
        bot: bool = False

    class Member(msgspec.Struct):
        roles: list[int]
        user: User | None = None
        nick: str | None = None
        joined_at: str | None = None

    class Message(msgspec.Struct):
        id: int
        channel_id: int
        author: User
        content: str
        timestamp: str
        guild_id: int | None = None
        member: Member | None = None
        mentions: list[User] = []
        mention_roles: list[int] = []

    class Guild(msgspec.Struct):
        id: int
        name: str
        members: list[Member] = []

    class Typing(msgspec.Struct):
        channel_id: int
        user_id: int
        timestamp: int
        guild_id: int | None = None

    class Envelope(msgspec.Struct):
        op: int
        t: str | None
        s: int | None
        d: msgspec.Raw

    envelope = msgspec.json.Decoder(Envelope)
    by_type = {
        "MESSAGE_CREATE": msgspec.json.Decoder(Message, strict=False),
        "GUILD_CREATE": msgspec.json.Decoder(Guild, strict=False),
        "TYPING_START": msgspec.json.Decoder(Typing, strict=False),
    }

    def decode(data: bytes) -> Any:
        outer = envelope.decode(data)
        return by_type[outer.t or ""].decode(outer.d)

    return decode


def shardline_read(data: bytes) -> Any:
    event = decode_gateway_event(data)
    raw = event.raw
    if "author" in raw:
        return event.author.id, event.content, event.guild_id  # type: ignore[attr-defined]
    if "members" in raw:
        return [m.user.id for m in event.members if m.user]  # type: ignore[attr-defined]
    return event.user_id  # type: ignore[attr-defined]


def measure(fn: Callable[[bytes], Any], items: list[bytes], seconds: float) -> float:
    """Payloads per second, over at least ``seconds``."""
    for data in items[:10]:
        fn(data)  # warm up
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for data in items:
            fn(data)
        done += len(items)
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per candidate")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best kept)")
    args = parser.parse_args()
    candidates: list[tuple[str, Callable[[bytes], Any]]] = [
        ("orjson.loads", orjson.loads),
        ("shardline", decode_gateway_event),
        ("shardline+read", shardline_read),
        ("eager slotted", eager_decode),
    ]
    spec = msgspec_decoder()
    if spec is not None:
        candidates.append(("msgspec", spec))
    else:
        print("msgspec not installed (pip install -e '.[bench]'): skipped")
    print(f"{'payload':<22}{'decoder':<16}{'payloads/s':>14}{'MB/s':>10}{'vs orjson':>11}")
    for label, items in payloads().items():
        size = sum(len(i) for i in items) / len(items)
        # Interleaved rounds, best of each: a noisy machine (CPU steal) slows whichever
        # candidate happens to run then; the best round is the least disturbed.
        best = dict.fromkeys((name for name, _ in candidates), 0.0)
        for _ in range(args.rounds):
            for name, fn in candidates:
                best[name] = max(best[name], measure(fn, items, args.seconds / args.rounds))
        floor = 0.0
        for name, _ in candidates:
            rate = best[name]
            floor = floor or rate
            print(
                f"{label:<22}{name:<16}{rate:>14,.0f}{rate * size / 1e6:>10.1f}"
                f"{rate / floor:>10.2f}x"
            )
        print()


if __name__ == "__main__":
    main()
