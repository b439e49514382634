"""Dispatches shaped like the traffic a real bot receives, for the emulator's generated
messages and benchmark feeds (docs/emulator.md, "The feed").

A MESSAGE_CREATE as Discord sends it (API v10) carries its author and member objects, and
most messages are short chat: a few words, often with emoji or non-ASCII text. About one in
five carries more: a reply (``message_reference`` and the whole ``referenced_message``),
mentions (each mentioned user with its member object), attachments, embeds, stickers or
components. Every choice is drawn from a generator seeded by the message's id, so a feed is
the same on every run. TYPING_START, MESSAGE_REACTION_ADD, MESSAGE_UPDATE and
PRESENCE_UPDATE follow the same shapes, for a feed that mixes event types.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

__all__ = [
    "MIX",
    "SHAPES",
    "avatar_hash",
    "chat_text",
    "message_update",
    "presence_update",
    "reaction_add",
    "shape_message",
    "typing_start",
]

# The share of messages that carry each extra (the rest is plain chat). Replies and
# mentions dominate; together ~19% carry mentions, embeds, attachments or replies.
SHAPES = (
    ("reply", 0.07),
    ("mentions", 0.05),
    ("attachments", 0.04),
    ("embed", 0.03),
    ("sticker", 0.01),
    ("components", 0.01),
)
# A mixed feed's event types and their shares (a bot with the message, reaction, typing
# and presence intents): what the emulator's ``mixed`` blast draws from (World.mixed).
MIX = (
    ("MESSAGE_CREATE", 0.45),
    ("TYPING_START", 0.22),
    ("MESSAGE_REACTION_ADD", 0.12),
    ("PRESENCE_UPDATE", 0.12),
    ("MESSAGE_UPDATE", 0.09),
)

_WORDS = (
    "ok yeah lol no the a to is it that i you this what for and of in on me my gg nice "
    "thanks please anyone know how why when server bot game play tonight tomorrow later "
    "wait really same omg idk brb update patch fixed broken works again hello hey guys "
    "anyone here link check dm voice stream clip rank match team win lost"
).split()
_UNICODE = (
    "😂",
    "🔥",
    "👍",
    "❤️",
    "😭",
    "🙏",
    "✨",
    "💀",
    "🎉",
    "👀",
    "ça",
    "très",
    "über",
    "größer",
    "jalapeño",
    "привет",
    "спасибо",
    "你好",
    "谢谢",
    "こんにちは",
    "ありがとう",
    "안녕하세요",
    "مرحبا",
    "γεια",
)
_FILES = (
    ("image.png", "image/png"),
    ("IMG_2041.jpg", "image/jpeg"),
    ("screenshot.webp", "image/webp"),
    ("clip.mp4", "video/mp4"),
    ("log.txt", "text/plain; charset=utf-8"),
    ("voice-message.ogg", "audio/ogg"),
)
_SITES = (
    ("YouTube", "https://www.youtube.com", "video"),
    ("GitHub", "https://github.com", "article"),
    ("Twitter", "https://x.com", "rich"),
    ("Tenor", "https://tenor.com", "gifv"),
    ("Reddit", "https://www.reddit.com", "link"),
)


def avatar_hash(user_id: int) -> str | None:
    """Most users have an avatar (a 32-hex-digit hash, a_ when animated); some do not."""
    rng = random.Random(user_id)
    if rng.random() < 0.12:
        return None
    digest = f"{rng.getrandbits(128):032x}"
    return ("a_" + digest) if rng.random() < 0.08 else digest


def chat_text(rng: random.Random) -> str:
    """A chat line: mostly a few words, sometimes a paragraph; emoji and non-ASCII text."""
    roll = rng.random()
    if roll < 0.45:
        count = rng.randint(1, 5)
    elif roll < 0.85:
        count = rng.randint(5, 20)
    elif roll < 0.97:
        count = rng.randint(20, 60)
    else:
        count = rng.randint(60, 180)
    words = [
        rng.choice(_UNICODE) if rng.random() < 0.12 else rng.choice(_WORDS) for _ in range(count)
    ]
    text = " ".join(words)
    if rng.random() < 0.04:
        text += f" https://example.com/{rng.getrandbits(40):x}"
    if rng.random() < 0.05:
        text += f" <:{rng.choice(_WORDS)}:{rng.getrandbits(60)}>"
    return text


def _image(rng: random.Random, url: str) -> dict[str, Any]:
    width, height = rng.choice(((1280, 720), (1920, 1080), (640, 640), (1080, 1350)))
    return {
        "url": url,
        "proxy_url": url.replace("https://", "https://media.discordapp.net/external/"),
        "width": width,
        "height": height,
        "placeholder": "".join(rng.choice("ABCDEFGHabcdefgh0123456789") for _ in range(24)),
        "placeholder_version": 1,
        "flags": 0,
    }


def _attachment(rng: random.Random, channel_id: str, ident: int) -> dict[str, Any]:
    name, kind = rng.choice(_FILES)
    url = f"https://cdn.discordapp.com/attachments/{channel_id}/{ident}/{name}"
    out: dict[str, Any] = {
        "id": str(ident),
        "filename": name,
        "size": rng.randint(2_000, 8_000_000),
        "url": url
        + f"?ex={rng.getrandbits(32):x}&is={rng.getrandbits(32):x}&hm={rng.getrandbits(256):064x}&",
        "proxy_url": url.replace("cdn.discordapp.com", "media.discordapp.net"),
        "content_type": kind,
        "content_scan_version": 2,
    }
    if kind.startswith(("image", "video")):
        image = _image(rng, url)
        out.update(width=image["width"], height=image["height"])
        out.update(placeholder=image["placeholder"], placeholder_version=1)
    if kind == "audio/ogg":
        out.update(duration_secs=round(rng.uniform(1, 60), 2), waveform="A" * 88, flags=8192)
    return out


def _embed(rng: random.Random) -> dict[str, Any]:
    site, base, kind = rng.choice(_SITES)
    url = f"{base}/{rng.getrandbits(48):x}"
    embed: dict[str, Any] = {
        "type": kind,
        "url": url,
        "title": chat_text(rng)[:100],
        "description": chat_text(rng)[:300],
        "color": rng.getrandbits(24),
        "provider": {"name": site, "url": base},
        "thumbnail": _image(rng, f"{base}/thumb/{rng.getrandbits(32):x}.jpg"),
        "content_scan_version": 2,
    }
    if kind == "rich":
        embed["author"] = {"name": chat_text(rng)[:40], "url": url}
        embed["footer"] = {"text": site, "icon_url": f"{base}/favicon.png"}
        embed["fields"] = [
            {"name": rng.choice(_WORDS), "value": chat_text(rng)[:80], "inline": True}
            for _ in range(rng.randint(1, 3))
        ]
    if kind == "video":
        embed["video"] = {"url": url + "/embed", "width": 1280, "height": 720, "flags": 0}
    return embed


def _components(rng: random.Random) -> list[dict[str, Any]]:
    buttons = [
        {
            "type": 2,
            "id": n + 2,  # every component has a numeric id within the message
            "style": rng.randint(1, 4),
            "label": rng.choice(_WORDS).title(),
            "custom_id": f"{rng.choice(_WORDS)}:{rng.getrandbits(48):x}",
        }
        for n in range(rng.randint(1, 4))
    ]
    return [{"type": 1, "id": 1, "components": buttons}]


def shape_message(
    rng: random.Random,
    base: dict[str, Any],
    *,
    member_of: Callable[[int], tuple[dict[str, Any], dict[str, Any]]],
    earlier: Callable[[], dict[str, Any]],
    next_id: Callable[[], int],
) -> dict[str, Any]:
    """Give ``base`` (a plain MESSAGE_CREATE ``d`` with its author, member and ids) the
    content and extras a real one has: ``member_of(index)`` gives another member of the
    guild (its user, its member object), ``earlier()`` a message to reply to, ``next_id()``
    a snowflake for an attachment."""
    d = base
    d["content"] = chat_text(rng)
    roll, extras = rng.random(), ""
    for name, share in SHAPES:
        if roll < share:
            extras = name
            break
        roll -= share
    guild = "guild_id" in d
    if extras == "reply":
        replied = earlier()
        d["type"] = 19
        d["message_reference"] = {
            "type": 0,
            "channel_id": replied["channel_id"],
            "message_id": replied["id"],
            **({"guild_id": d["guild_id"]} if guild else {}),
        }
        d["referenced_message"] = replied
        mentioned = dict(replied["author"])
        if guild:
            mentioned["member"] = {
                k: v for k, v in member_of(rng.randint(1, 50))[1].items() if k != "user"
            }
        d["mentions"] = [mentioned]
    elif extras == "mentions" and guild:
        mentions = []
        for _ in range(rng.randint(1, 3)):
            user, member = member_of(rng.randint(1, 50))
            mentions.append({**user, "member": {k: v for k, v in member.items() if k != "user"}})
            d["content"] = f"<@{user['id']}> " + d["content"]
        d["mentions"] = mentions
        if rng.random() < 0.2:
            d["mention_roles"] = [str(rng.getrandbits(60))]
    elif extras == "attachments":
        if rng.random() < 0.5:
            d["content"] = ""
        d["attachments"] = [
            _attachment(rng, d["channel_id"], next_id()) for _ in range(rng.randint(1, 3))
        ]
    elif extras == "embed":
        site = _SITES[rng.randrange(len(_SITES))][1]
        d["content"] = f"{site}/{rng.getrandbits(48):x}"
        d["embeds"] = [_embed(rng)]
    elif extras == "sticker":
        d["content"] = ""
        d["sticker_items"] = [
            {
                "id": str(rng.getrandbits(60)),
                "name": rng.choice(_WORDS),
                "format_type": rng.choice((1, 2, 4)),
            }
        ]
    elif extras == "components":
        d["components"] = _components(rng)
    return d


def message_update(rng: random.Random, message: dict[str, Any], now_ms_iso: str) -> dict[str, Any]:
    """A MESSAGE_UPDATE ``d`` for an edit of ``message``: API v10 sends the whole message
    again, its content changed and ``edited_timestamp`` set (a link's embed arriving later
    comes the same way)."""
    edited = dict(message)
    edited["content"] = chat_text(rng)
    edited["edited_timestamp"] = now_ms_iso
    edited.pop("nonce", None)  # only the author's own client ever sees it
    return edited


def typing_start(
    rng: random.Random,
    guild_id: int,
    channel_id: int,
    user: dict[str, Any],
    member: dict[str, Any],
    now_s: int,
) -> dict[str, Any]:
    return {
        "user_id": user["id"],
        "timestamp": now_s,
        "member": member,
        "channel_id": str(channel_id),
        "guild_id": str(guild_id),
    }


def reaction_add(
    rng: random.Random,
    guild_id: int,
    channel_id: int,
    message_id: int,
    author_id: str,
    member: dict[str, Any],
) -> dict[str, Any]:
    custom = rng.random() < 0.3
    emoji: dict[str, Any] = (
        {"id": str(rng.getrandbits(60)), "name": rng.choice(_WORDS), "animated": rng.random() < 0.2}
        if custom
        else {"id": None, "name": rng.choice(_UNICODE[:10])}
    )
    return {
        "user_id": member["user"]["id"],
        "type": 0,
        "message_id": str(message_id),
        "message_author_id": author_id,
        "member": member,
        "emoji": emoji,
        "channel_id": str(channel_id),
        "burst": False,
        "guild_id": str(guild_id),
        "burst_colors": [],
    }


def presence_update(rng: random.Random, guild_id: int, user_id: str) -> dict[str, Any]:
    status = rng.choice(("online", "online", "idle", "dnd", "offline"))
    activities: list[dict[str, Any]] = []
    if status != "offline" and rng.random() < 0.6:
        kind = rng.choice((0, 0, 2, 4))
        activity: dict[str, Any] = {
            "type": kind,
            "name": "Custom Status" if kind == 4 else chat_text(rng)[:30],
            "id": "custom" if kind == 4 else f"{rng.getrandbits(64):x}",
            "created_at": 1_780_000_000_000 + rng.getrandbits(24),
        }
        if kind == 4:
            activity["state"] = chat_text(rng)[:60]
        elif kind == 0:
            activity["application_id"] = str(rng.getrandbits(60))
            activity["timestamps"] = {"start": 1_780_000_000_000 - rng.getrandbits(24)}
        elif kind == 2:
            activity.update(
                details=chat_text(rng)[:40],
                state=chat_text(rng)[:40],
                sync_id=f"{rng.getrandbits(64):x}",
                party={"id": f"spotify:{user_id}"},
                assets={"large_image": f"spotify:{rng.getrandbits(64):x}", "large_text": "album"},
            )
        activities.append(activity)
    client = rng.choice(("desktop", "mobile", "web"))
    return {
        "user": {"id": user_id},
        "status": status,
        "guild_id": str(guild_id),
        "client_status": {} if status == "offline" else {client: status},
        "activities": activities,
    }
