"""Where ``shardline demo`` runs: the CLI's default runtime dir when it is free (so a second
terminal needs no flags), a private one when a fleet uses it; and nothing left behind."""

from __future__ import annotations

from pathlib import Path

from runtime.cli import build_parser
from runtime.demo import demo_place


def default_config(tmp_path: Path, runtime_dir: Path) -> str:
    path = tmp_path / "shardline.toml"
    path.write_text(f'[ipc]\nruntime_dir = "{runtime_dir}"\n')
    return str(path)


def test_a_free_default_dir_is_used_and_removed_afterwards(tmp_path: Path) -> None:
    runtime_dir = tmp_path / "run"
    place = demo_place(default_config(tmp_path, runtime_dir))
    assert place.runtime_dir == runtime_dir and place.config_flag == ""
    runtime_dir.mkdir()
    (runtime_dir / "sessions.json").write_text("{}")
    place.clean()
    assert not runtime_dir.exists()


def test_a_dir_that_existed_keeps_what_was_there(tmp_path: Path) -> None:
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir()
    (runtime_dir / "recordings").mkdir()
    place = demo_place(default_config(tmp_path, runtime_dir))
    assert place.runtime_dir == runtime_dir
    (runtime_dir / "client.key").write_text("k")
    place.clean()
    assert [p.name for p in runtime_dir.iterdir()] == ["recordings"]


def test_a_fleets_dir_is_left_alone_and_the_flag_to_reach_the_demo_is_given(
    tmp_path: Path,
) -> None:
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir()
    (runtime_dir / "sessions.json").write_text('{"a real": "fleet"}')
    place = demo_place(default_config(tmp_path, runtime_dir))
    try:
        assert place.runtime_dir != runtime_dir and place.config_flag.startswith(" --config ")
        args = build_parser().parse_args(["status", *place.config_flag.split()])
        assert args.config.endswith("demo.toml")
    finally:
        place.clean()
    assert not place.runtime_dir.exists()
    assert (runtime_dir / "sessions.json").read_text() == '{"a real": "fleet"}'
