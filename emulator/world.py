"""The emulated bot's world: guilds, users, members, channels and messages in Discord's full
payload shapes, generated deterministically from a seed.

Shapes follow Discord's documentation (resources/guild, resources/channel, resources/user,
resources/message, topics/gateway-events): every field the docs mark as always present is
present, nullable ones are null. Guild ids are spread over timestamps so that
``(guild_id >> 22) % num_shards`` distributes them over shards the way Discord does.
"""

from __future__ import annotations

import base64
import random
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from emulator.feed import (
    MIX,
    avatar_hash,
    message_update,
    presence_update,
    reaction_add,
    shape_message,
    typing_start,
)

__all__ = [
    "DEFAULT_BOT_ID",
    "DEFAULT_TOKEN",
    "DISCORD_EPOCH_MS",
    "World",
    "WorldConfig",
    "make_snowflake",
    "shard_for",
    "token_for",
]

DISCORD_EPOCH_MS = 1_420_070_400_000
_BASE_MS = 1_600_000_000_000  # September 2020
_CHANNELS_PER_GUILD = 6  # category, 3 text, 2 voice
_EVERYONE_PERMISSIONS = "1071698660929"
_ADMIN_PERMISSIONS = "8"
_WORDS = (
    "shard latency voice gateway heartbeat resume opus packet guild member channel "
    "presence intent bucket identify session dispatch sequence emulator runtime"
).split()


def make_snowflake(timestamp_ms: int, worker: int = 1, process: int = 0, increment: int = 0) -> int:
    return (
        ((timestamp_ms - DISCORD_EPOCH_MS) << 22)
        | (worker << 17)
        | (process << 12)
        | (increment & 0xFFF)
    )


def token_for(bot_id: int, secret: str = "emulated-token-not-a-secret") -> str:
    """A token in Discord's format (base64 of the bot id, timestamp, HMAC): clients such as
    hikari parse the bot id out of it."""
    head = base64.urlsafe_b64encode(str(bot_id).encode()).decode().rstrip("=")
    return f"{head}.ZW11bA.{secret}"


def shard_for(guild_id: int, num_shards: int) -> int:
    """Discord's sharding formula."""
    return (guild_id >> 22) % num_shards


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="microseconds")


DEFAULT_BOT_ID = make_snowflake(_BASE_MS - 10_000_000, 0, 0, 1)
DEFAULT_TOKEN = token_for(DEFAULT_BOT_ID)


@dataclass
class WorldConfig:
    guilds: int = 10
    seed: int = 0
    large_share: float = 0.05  # fraction of guilds that are "large"
    large_members: int = 5000  # members in a large guild
    small_members: tuple[int, int] = (5, 60)  # range of members in the others
    online_share: float = 0.3  # fraction of members online (presences)
    bot_id: int = DEFAULT_BOT_ID
    bot_name: str = "shardline-emulated-bot"
    application_id: int = 0  # 0 = same as bot_id


class World:
    """Generates and caches the guilds the emulated bot is in."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        self.bot_id = config.bot_id
        self.application_id = config.application_id or config.bot_id
        rng = random.Random(config.seed)
        self.guild_ids: list[int] = []
        stamps = sorted(rng.sample(range(0, 400_000_000), config.guilds))
        for i, offset in enumerate(stamps):
            self.guild_ids.append(make_snowflake(_BASE_MS + offset, 1, 0, i))
        large_count = round(config.guilds * config.large_share)
        self.large_guilds = set(rng.sample(self.guild_ids, large_count))
        self._member_counts = {
            gid: config.large_members
            if gid in self.large_guilds
            else rng.randint(*config.small_members)
            for gid in self.guild_ids
        }
        self._guild_cache: dict[int, dict[str, Any]] = {}
        self._message_counter = 0
        self._rng = rng
        # Each guild's messages are numbered, 1, 2, 3... in "shardline_guild_seq": whatever
        # shards or sessions carry them, a consumer can see a gap or a duplicate per guild.
        self._guild_seq: dict[int | None, int] = {}
        self._recent: dict[int | None, deque[dict[str, Any]]] = {}  # for replies
        self.dm_channel_id = make_snowflake(_BASE_MS - 5_000_000, 2, 0, 7)

    # -- users and members ----------------------------------------------------------------

    def bot_user(self) -> dict[str, Any]:
        return {
            "id": str(self.bot_id),
            "username": self.config.bot_name,
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": True,
            "system": False,
            "mfa_enabled": True,
            "banner": None,
            "accent_color": None,
            "locale": "en-US",
            "verified": True,
            "email": None,
            "flags": 0,
            "premium_type": 0,
            "public_flags": 0,
            "avatar_decoration_data": None,
        }

    def user_id(self, guild_id: int, index: int) -> int:
        """Member ``index`` of a guild; index 0 is the owner. The bot is not numbered."""
        return make_snowflake(
            (guild_id >> 22) + DISCORD_EPOCH_MS + 1000 + index // 4096, 3, 1, index
        )

    def member_count(self, guild_id: int) -> int:
        return self._member_counts[guild_id] + 1  # + the bot

    def user(self, user_id: int) -> dict[str, Any]:
        name = f"user{user_id % 1_000_000:06d}"
        return {
            "id": str(user_id),
            "username": name,
            "discriminator": "0",
            "global_name": name.title(),
            "avatar": avatar_hash(user_id),
            "bot": False,
            "system": False,
            "banner": None,
            "accent_color": None,
            "public_flags": 0,
            "avatar_decoration_data": None,
            "clan": None,
            "primary_guild": None,
            "collectibles": None,
        }

    def member(self, guild_id: int, user: dict[str, Any], roles: list[str]) -> dict[str, Any]:
        return {
            "user": user,
            "nick": None,
            "avatar": None,
            "banner": None,
            "roles": roles,
            "joined_at": _iso((int(user["id"]) >> 22) + DISCORD_EPOCH_MS + 60_000),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
            "avatar_decoration_data": None,
        }

    def members(self, guild_id: int) -> list[dict[str, Any]]:
        """Every member, the bot first."""
        member_role = str(self._role_id(guild_id, 1))
        out = [self.member(guild_id, self.bot_user(), [str(self._role_id(guild_id, 2))])]
        for i in range(self._member_counts[guild_id]):
            out.append(self.member(guild_id, self.user(self.user_id(guild_id, i)), [member_role]))
        return out

    def is_online(self, user_id: int) -> bool:
        return (user_id * 2654435761 % 1000) < self.config.online_share * 1000

    def presence(self, user_id: int, guild_id: int | None = None) -> dict[str, Any]:
        activity = {
            "name": "shardline",
            "type": 0,
            "created_at": (user_id >> 22) + DISCORD_EPOCH_MS,
        }
        presence: dict[str, Any] = {
            "user": {"id": str(user_id)},
            "status": "online",
            "activities": [activity],
            "client_status": {"desktop": "online"},
        }
        if guild_id is not None:
            presence["guild_id"] = str(guild_id)
        return presence

    # -- guilds ---------------------------------------------------------------------------

    def _role_id(self, guild_id: int, n: int) -> int:
        return guild_id if n == 0 else guild_id + 100 + n

    def channel_ids(self, guild_id: int) -> list[int]:
        return [guild_id + 1000 + n for n in range(_CHANNELS_PER_GUILD)]

    def text_channel_id(self, guild_id: int) -> int:
        return self.channel_ids(guild_id)[1]

    def voice_channel_id(self, guild_id: int) -> int:
        return self.channel_ids(guild_id)[4]

    def channels(self, guild_id: int) -> list[dict[str, Any]]:
        ids = self.channel_ids(guild_id)
        category, text_ids, voice_ids = ids[0], ids[1:4], ids[4:6]
        out: list[dict[str, Any]] = [
            {
                "id": str(category),
                "type": 4,
                "name": "General",
                "position": 0,
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
                "flags": 0,
            }
        ]
        for pos, cid in enumerate(text_ids):
            out.append(
                {
                    "id": str(cid),
                    "type": 0,
                    "name": ("general", "bot-commands", "off-topic")[pos],
                    "position": pos,
                    "permission_overwrites": [],
                    "nsfw": False,
                    "topic": None,
                    "last_message_id": None,
                    "rate_limit_per_user": 0,
                    "parent_id": str(category),
                    "last_pin_timestamp": None,
                    "flags": 0,
                }
            )
        for pos, cid in enumerate(voice_ids):
            out.append(
                {
                    "id": str(cid),
                    "type": 2,
                    "name": ("Lounge", "Music")[pos],
                    "position": pos,
                    "permission_overwrites": [],
                    "nsfw": False,
                    "last_message_id": None,
                    "bitrate": 64000,
                    "user_limit": 0,
                    "rate_limit_per_user": 0,
                    "rtc_region": None,
                    "video_quality_mode": 1,
                    "parent_id": str(category),
                    "flags": 0,
                }
            )
        return out

    def roles(self, guild_id: int) -> list[dict[str, Any]]:
        def role(n: int, name: str, permissions: str, managed: bool = False) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": str(self._role_id(guild_id, n)),
                "name": name,
                "description": None,
                "color": 0 if n == 0 else 0x5865F2,
                "colors": {
                    "primary_color": 0 if n == 0 else 0x5865F2,
                    "secondary_color": None,
                    "tertiary_color": None,
                },
                "hoist": False,
                "icon": None,
                "unicode_emoji": None,
                "position": n,
                "permissions": permissions,
                "managed": managed,
                "mentionable": False,
                "flags": 0,
            }
            if managed:
                out["tags"] = {"bot_id": str(self.bot_id)}
            return out

        return [
            role(0, "@everyone", _EVERYONE_PERMISSIONS),
            role(1, "Members", _EVERYONE_PERMISSIONS),
            role(2, self.config.bot_name, _ADMIN_PERMISSIONS, managed=True),
        ]

    def guild(self, guild_id: int) -> dict[str, Any]:
        """The guild object (without the GUILD_CREATE extra fields)."""
        index = self.guild_ids.index(guild_id)
        channel_ids = self.channel_ids(guild_id)
        return {
            "id": str(guild_id),
            "name": f"Emulated Guild {index}",
            "icon": None,
            "icon_hash": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.user_id(guild_id, 0)),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "widget_enabled": False,
            "widget_channel_id": None,
            "verification_level": 1,
            "default_message_notifications": 1,
            "explicit_content_filter": 2,
            "roles": self.roles(guild_id),
            "emojis": [],
            "features": ["COMMUNITY"] if guild_id in self.large_guilds else [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": str(channel_ids[1]),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "max_presences": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "nsfw_level": 0,
            "stickers": [],
            "premium_progress_bar_enabled": False,
            "safety_alerts_channel_id": None,
            "incidents_data": None,
            "hub_type": None,
            "nsfw": False,
            "region": "deprecated",
            "latest_onboarding_question_id": None,
            "home_header": None,
            "inventory_settings": None,
            "version": 0,
        }

    def guild_create(
        self, guild_id: int, *, large_threshold: int, presences: bool
    ) -> dict[str, Any]:
        """GUILD_CREATE ``d``: the guild plus the extra fields. A large guild lists only its
        online members (with the presence intent) or only the bot (without it), like Discord."""
        key = (large_threshold, presences)
        cached = self._guild_cache.get(hash(key) ^ guild_id)
        if cached is not None:
            return cached
        count = self.member_count(guild_id)
        large = count > large_threshold
        all_members = self.members(guild_id)
        if not large:
            members = all_members
        elif presences:
            members = [all_members[0]] + [
                m for m in all_members[1:] if self.is_online(int(m["user"]["id"]))
            ]
        else:
            members = [all_members[0]]
        data = self.guild(guild_id)
        data.update(
            {
                "joined_at": _iso((guild_id >> 22) + DISCORD_EPOCH_MS + 3_600_000),
                "large": large,
                "unavailable": False,
                "member_count": count,
                "voice_states": [],
                "members": members,
                "channels": self.channels(guild_id),
                "threads": [],
                "presences": [
                    self.presence(int(m["user"]["id"]))
                    for m in members[1:]
                    if presences and self.is_online(int(m["user"]["id"]))
                ],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
                "embedded_activities": [],
            }
        )
        self._guild_cache[hash(key) ^ guild_id] = data
        return data

    # -- messages -------------------------------------------------------------------------

    def message(
        self,
        guild_id: int | None,
        content: str | None = None,
        *,
        author_index: int = 1,
        channel_id: int | None = None,
        size: int | None = None,
    ) -> dict[str, Any]:
        """A MESSAGE_CREATE ``d``. Without ``content``: shaped like Discord's traffic
        (emulator/feed.py: chat of varied length, a fifth with replies, mentions,
        attachments, embeds...); with ``size``, plain text padded to ~``size`` bytes instead
        (the old uniform feed, for comparison)."""
        self._message_counter += 1
        now_ms = _BASE_MS + 500_000_000 + self._message_counter
        message_id = make_snowflake(now_ms, 4, 0, self._message_counter)
        if guild_id is None:
            author = self.user(make_snowflake(_BASE_MS - 4_000_000, 3, 2, author_index))
            channel = channel_id or self.dm_channel_id
        else:
            author = self.user(self.user_id(guild_id, author_index % self._member_counts[guild_id]))
            channel = channel_id or self.text_channel_id(guild_id)
        data: dict[str, Any] = {
            "type": 0,
            "tts": False,
            "timestamp": _iso(now_ms),
            "pinned": False,
            "nonce": str(message_id - 7),
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "id": str(message_id),
            "flags": 0,
            "embeds": [],
            "edited_timestamp": None,
            "content": "",
            "components": [],
            "channel_id": str(channel),
            "author": author,
            "attachments": [],
        }
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
            member = self.member(guild_id, author, [str(self._role_id(guild_id, 1))])
            del member["user"]
            data["member"] = member
        data["channel_type"] = 1 if guild_id is None else 0
        if content is None and size is not None:
            rng = random.Random(message_id)
            words: list[str] = []
            base = len(orjson.dumps(data))
            while base + sum(len(w) + 1 for w in words) < size:
                words.append(rng.choice(_WORDS))
            data["content"] = " ".join(words)
        elif content is None:
            gid = guild_id
            shape_message(
                random.Random(message_id),
                data,
                member_of=lambda index: self._member_of(gid, index),
                earlier=lambda: self._earlier(gid, data),
                next_id=lambda: make_snowflake(now_ms, 5, 0, self._next_counter()),
            )
        else:
            data["content"] = content
        self._remember(guild_id, data)
        seq = self._guild_seq[guild_id] = self._guild_seq.get(guild_id, 0) + 1
        data["shardline_guild_seq"] = seq
        return data

    def mixed(self, guild_id: int) -> tuple[str, dict[str, Any]]:
        """One dispatch of a mixed feed, ``(t, d)``: its type drawn from feed.MIX
        (messages, typing, reactions, presences, edits), each shaped like Discord's."""
        self._message_counter += 1
        rng = random.Random(self._message_counter * 7919)
        t = rng.choices([t for t, _ in MIX], weights=[share for _, share in MIX])[0]
        if t == "MESSAGE_CREATE":
            return t, self.message(guild_id)
        user = self.user(
            self.user_id(guild_id, 1 + rng.randrange(self._member_counts[guild_id] - 1))
        )
        member = self.member(guild_id, user, [str(self._role_id(guild_id, 1))])
        channel = self.text_channel_id(guild_id)
        now_ms = _BASE_MS + 500_000_000 + self._message_counter
        if t == "TYPING_START":
            return t, typing_start(rng, guild_id, channel, user, member, now_ms // 1000)
        if t == "MESSAGE_REACTION_ADD":
            message_id = make_snowflake(now_ms - 60_000, 4, 0, self._message_counter)
            return t, reaction_add(rng, guild_id, channel, message_id, user["id"], member)
        if t == "PRESENCE_UPDATE":
            return t, presence_update(rng, guild_id, user["id"])
        recent = self._recent.get(guild_id)
        if not recent:  # nothing to edit yet
            return "MESSAGE_CREATE", self.message(guild_id)
        message = recent[rng.randrange(len(recent))]
        author_member = self.member(guild_id, message["author"], [str(self._role_id(guild_id, 1))])
        del author_member["user"]
        whole = {**message, "guild_id": str(guild_id), "member": author_member}
        return t, message_update(rng, whole, _iso(now_ms))

    def _next_counter(self) -> int:
        self._message_counter += 1
        return self._message_counter

    def _member_of(self, guild_id: int | None, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """A member of the guild (its user, its member object), for mentions."""
        assert guild_id is not None
        user = self.user(self.user_id(guild_id, index % self._member_counts[guild_id]))
        return user, self.member(guild_id, user, [str(self._role_id(guild_id, 1))])

    def _earlier(self, guild_id: int | None, message: dict[str, Any]) -> dict[str, Any]:
        """A recent message of the guild to reply to (as ``referenced_message`` carries it:
        no member, no guild id), else one made up in the same channel."""
        recent = self._recent.get(guild_id)
        if recent:
            return recent[len(recent) // 2]
        made = {k: v for k, v in message.items() if k not in ("member", "guild_id")}
        return {**made, "id": str(int(message["id"]) - 1_000_000), "content": "hi"}

    def _remember(self, guild_id: int | None, message: dict[str, Any]) -> None:
        recent = self._recent.setdefault(guild_id, deque(maxlen=20))
        kept = {
            k: v
            for k, v in message.items()
            if k not in ("member", "guild_id", "referenced_message", "shardline_guild_seq")
        }
        recent.append(kept)

    def messages_in(self, guild_id: int | None) -> int:
        """How many messages were generated in the guild (its last shardline_guild_seq)."""
        return self._guild_seq.get(guild_id, 0)

    def join_guilds(self, count: int) -> list[int]:
        """The bot joins ``count`` new guilds (ids later than every existing one); returns
        their ids."""
        newest = max(self.guild_ids, default=0) >> 22
        added = []
        for k in range(count):
            gid = make_snowflake(newest + DISCORD_EPOCH_MS + 1 + k, 1, 0, len(self.guild_ids))
            self.guild_ids.append(gid)
            self._member_counts[gid] = self._rng.randint(*self.config.small_members)
            added.append(gid)
        return added
