"""The runtime directory and the files in it are trusted only when they are ours alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.rundir import UnsafeRuntimeDirError, check_owned_file, prepare_runtime_dir

OTHER_UID = 4242


def give_away(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` another user's: for real as root (CI), else by changing who we are."""
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, OTHER_UID)
    else:
        uid = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: uid + 1)


def test_a_new_dir_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "run" / "shardline"
    prepare_runtime_dir(path)
    assert path.is_dir() and (path.stat().st_mode & 0o777) == 0o700


def test_an_existing_dir_of_ours_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "mine"
    path.mkdir(mode=0o755)
    prepare_runtime_dir(path)
    assert (path.stat().st_mode & 0o777) == 0o700


def test_a_dir_created_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "planted"
    path.mkdir(mode=0o700)
    give_away(path, monkeypatch)
    with pytest.raises(UnsafeRuntimeDirError, match=r"owned by uid \d+, not by this user"):
        prepare_runtime_dir(path)


def test_a_dir_others_can_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open"
    path.mkdir()
    os.chmod(path, 0o777)
    with pytest.raises(UnsafeRuntimeDirError, match="writable by other users"):
        prepare_runtime_dir(path)
    assert (path.stat().st_mode & 0o777) == 0o777  # refused, not silently "fixed"


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(UnsafeRuntimeDirError, match="symbolic link"):
        prepare_runtime_dir(tmp_path / "link")


def test_files_are_checked_for_owner_mode_and_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert check_owned_file(tmp_path / "absent") is False
    mine = tmp_path / "sessions.json"
    mine.write_text("{}")
    os.chmod(mine, 0o600)
    assert check_owned_file(mine) is True
    os.chmod(mine, 0o666)
    with pytest.raises(UnsafeRuntimeDirError, match="writable by other users"):
        check_owned_file(mine)
    link = tmp_path / "link.json"
    link.symlink_to(mine)
    with pytest.raises(UnsafeRuntimeDirError, match="not a regular file"):
        check_owned_file(link)
    os.chmod(mine, 0o600)
    give_away(mine, monkeypatch)
    with pytest.raises(UnsafeRuntimeDirError, match="not written by shardline"):
        check_owned_file(mine)
