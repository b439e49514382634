"""The contracts in ipc/: a worker's command line, the checkpoint, the status records and
the state vocabularies, each built and read by one class."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ipc.checkpoint import Checkpoint, CheckpointError
from ipc.control import SessionCheckpoint
from ipc.states import ShardState, VoiceState
from ipc.status import BusRecord, FleetStatus, ShardRecord, SubscriberRecord, VoiceSessionRecord
from ipc.workerargs import DEFAULT_MAX_PAYLOAD, ShardArgs, VoiceArgs
from shards.inflate import DEFAULT_MAX_PAYLOAD as INFLATE_DEFAULT


def test_shard_args_round_trip_through_the_command_line() -> None:
    args = ShardArgs(
        shard_id=3,
        shard_count=8,
        gateway="wss://gateway.example",
        events="ipc:///tmp/bus.sock",
        resume='{"session_id": "s"}',
        ca_file="/etc/ca.pem",
        compression="none",
        backoff_base=0.25,
    )
    argv = args.to_argv()
    assert "--token-env" not in argv  # defaults are left out
    assert ShardArgs.from_argv(argv) == args
    assert args.source == "shard:3"


def test_voice_args_round_trip_with_flags_and_negative_numbers() -> None:
    args = VoiceArgs(
        guild=1, user=2, session="s", endpoint="e:443", channel=3, receive=True, nice=-10
    )
    assert VoiceArgs.from_argv(args.to_argv()) == args
    assert VoiceArgs.from_argv(args.replace(receive=False).to_argv()).receive is False


def test_a_refused_command_line_exits_with_argparses_status() -> None:
    with pytest.raises(SystemExit) as exited:
        ShardArgs.from_argv(["--shard-id", "x"])
    assert exited.value.code == 2


def test_the_shard_process_help_is_the_args_class_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shards", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out == ShardArgs.parser().format_help()
    assert DEFAULT_MAX_PAYLOAD == INFLATE_DEFAULT


GOOD = Checkpoint(2, 4, "sess", 41, "wss://resume.example", 1.5, 7, "99")


def test_a_checkpoint_survives_every_way_it_travels() -> None:
    assert Checkpoint.from_json(GOOD.to_json()) == GOOD
    back = Checkpoint.from_resume_arg(GOOD.resume_arg(), 2, 4)
    assert back == GOOD
    event = SessionCheckpoint.from_raw(GOOD.to_event().raw)
    assert Checkpoint.from_event(event, 4, 1.5) == GOOD


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seq": -1}, "seq"),
        ({"session_id": ""}, "session_id"),
        ({"resume_url": "http://evil"}, "resume_url"),
        ({"resume_url": "wss://user:pw@host"}, "resume_url"),
        ({"shard": 4}, "shard_count"),
        ({"user_id": "me"}, "user_id"),
        ({"saved_at": float("nan")}, "saved_at"),
    ],
)
def test_a_bad_checkpoint_is_refused_naming_the_field(
    change: dict[str, object], field: str
) -> None:
    with pytest.raises(CheckpointError, match=field):
        Checkpoint.from_json({**GOOD.to_json(), **change})


def test_the_fleet_status_reads_back_what_it_wrote_and_refuses_what_it_did_not() -> None:
    status = FleetStatus(
        bus=BusRecord(1, 2, 3, 4, [SubscriberRecord("app", 10, 20, 3, 300)]),
        shard_count=2,
        identifies_remaining=998,
        uptime=12.5,
        shards=[ShardRecord(0, ShardState.READY, 41.5, 9, "s", 3, 2.0, 0, "", 12.0, 7, 0)],
        apps=[],
        voice=[VoiceSessionRecord("1", "2", VoiceState.CONNECTED, None, 5, 0, 0.4, 0, 8, None)],
    )
    raw = status.to_json()
    assert raw["shards"][0]["state"] == "ready"  # the wire keeps the documented strings
    assert FleetStatus.from_json(raw) == status
    raw["shards"][0]["state"] = "dancing"
    with pytest.raises(ValueError):
        FleetStatus.from_json(raw)
    with pytest.raises(ValueError, match="guilds"):
        ShardRecord.from_json({**status.shards[0].to_json(), "guilds": "3"})
