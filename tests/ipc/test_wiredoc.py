"""docs/wire.md against the code: every generated table on the page is what the classes that
define the wire produce today. A command, field, reply, error code, control message, bus event
or status key that changes without the page failing here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ipc.wiredoc import SECTIONS, render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "wire.md"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_the_page_shows_what_the_classes_define(section: str) -> None:
    found = re.search(
        rf"<!-- generated: {section} -->\n(.*?)\n<!-- end: {section} -->",
        PAGE.read_text(),
        re.S,
    )
    assert found is not None, f"docs/wire.md has no generated {section} table"
    assert found.group(1) == render(section), (
        f"docs/wire.md's {section} table differs from the code: regenerate it with "
        "`python -m ipc.wiredoc` and say in the page what a consumer must change"
    )


def test_every_command_class_is_on_the_page() -> None:
    from ipc import requests

    page = PAGE.read_text()
    for cls in vars(requests).values():
        if isinstance(cls, type) and issubclass(cls, requests.Request) and "type_name" in vars(cls):
            assert f"`{cls.type_name}`" in page
