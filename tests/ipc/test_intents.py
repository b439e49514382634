import pytest

from ipc.intents import UnknownIntentError, intents_from_names, names_from_bits


def test_names_to_bits_and_back() -> None:
    bits = intents_from_names(["guilds", "GUILD_MESSAGES", "message_content"])
    assert bits == 1 | 1 << 9 | 1 << 15
    assert names_from_bits(bits) == ["guilds", "guild_messages", "message_content"]


def test_unknown_intent_lists_the_known_ones() -> None:
    with pytest.raises(UnknownIntentError, match=r"'guild_mesages'.*guild_messages"):
        intents_from_names(["guild_mesages"])
