"""The send clock's decisions, without sockets or sleeping: frames, SPEAKING, silence,
pauses and track ends at the times the transmitter names."""

from __future__ import annotations

from voiceworker.audio import SILENCE
from voiceworker.clock import FRAME
from voiceworker.transmitter import (
    SILENCE_FRAMES,
    SendFrame,
    SetSpeaking,
    SkipFrames,
    TrackDone,
    Transmitter,
    TxAction,
)


class Frames:
    """An audio source of ``n`` distinct frames; ``fail_at`` raises like a dead ffmpeg."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.left = [bytes([i]) * 3 for i in range(n)]
        self.fail_at = fail_at
        self.read_count = 0
        self.closed = False
        self.volume = 1.0

    def read(self) -> bytes | None:
        if self.fail_at is not None and self.read_count == self.fail_at:
            raise ValueError("ffmpeg exited with status 1")
        self.read_count += 1
        return self.left.pop(0) if self.left else None

    def close(self) -> None:
        self.closed = True


def run(tx: Transmitter, until: float) -> list[tuple[float, TxAction]]:
    """Drive the transmitter as the loop does: at each deadline, exactly on time."""
    out: list[tuple[float, TxAction]] = []
    while (at := tx.next_at) is not None and at <= until:
        for action in tx.due(at):
            if isinstance(action, SendFrame):
                tx.sent_at(at)
            out.append((at, action))
    return out


def test_a_track_is_speaking_frames_on_the_clock_silence_then_quiet() -> None:
    tx = Transmitter()
    source = Frames(3)
    assert tx.play(source, 10.0) == [SetSpeaking(True)]
    assert tx.next_at == 10.0
    actions = run(tx, 20.0)
    frames = [(t, a.opus) for t, a in actions if isinstance(a, SendFrame)]
    assert [round(t - 10.0, 3) for t, _ in frames] == [round(i * FRAME, 3) for i in range(8)]
    assert [f for _, f in frames] == [b"\0" * 3, b"\1" * 3, b"\2" * 3] + [SILENCE] * 5
    tail = [a for _, a in actions if not isinstance(a, SendFrame)]
    assert tail == [SetSpeaking(False), TrackDone(source, 3 + SILENCE_FRAMES)]
    assert tx.next_at is None and not tx.playing
    assert tx.clock is not None and tx.clock.late == 0


def test_pause_sends_silence_goes_quiet_and_resume_skips_the_time_paused() -> None:
    tx = Transmitter()
    tx.play(Frames(100), 0.0)
    run(tx, 0.05)  # frames at 0, 20, 40 ms
    tx.pause()
    paused = run(tx, 1.0)
    assert [a.opus for _, a in paused if isinstance(a, SendFrame)] == [SILENCE] * 5
    assert paused[-1][1] == SetSpeaking(False) and tx.next_at is None and tx.paused
    stopped_at = paused[-1][0]
    resumed = tx.resume(stopped_at + 1.0)
    assert resumed == [SkipFrames(50), SetSpeaking(True)]
    assert tx.next_at == stopped_at + 1.0  # the clock starts again from the resume


def test_a_resume_during_the_pause_silence_carries_on() -> None:
    tx = Transmitter()
    tx.play(Frames(10), 0.0)
    run(tx, 0.0)
    tx.pause()
    assert tx.resume(0.01) == []
    sent = [a for _, a in run(tx, 1.0) if isinstance(a, SendFrame)]
    assert len(sent) == 9 + SILENCE_FRAMES


def test_play_replaces_the_track_and_stop_ends_it_at_once() -> None:
    tx = Transmitter()
    first, second = Frames(10), Frames(10)
    tx.play(first, 0.0)
    run(tx, 0.02)
    assert tx.play(second, 0.03) == [
        SetSpeaking(False),
        TrackDone(first, 2, stopped=True),
        SetSpeaking(True),
    ]
    run(tx, 0.05)
    assert tx.stop() == [SetSpeaking(False), TrackDone(second, 2, stopped=True)]
    assert tx.stop() == [] and tx.next_at is None


def test_an_unreadable_source_ends_with_its_error_after_silence() -> None:
    tx = Transmitter()
    source = Frames(10, fail_at=2)
    tx.play(source, 0.0)
    actions = [a for _, a in run(tx, 1.0)]
    done = actions[-1]
    assert isinstance(done, TrackDone) and done.error == "ffmpeg exited with status 1"
    assert done.frames == 2 + SILENCE_FRAMES and not done.stopped


def test_a_track_started_while_paused_waits_for_resume() -> None:
    tx = Transmitter()
    tx.pause()
    assert tx.play(Frames(3), 0.0) == []
    assert tx.next_at is None
    assert tx.resume(0.5)[-1] == SetSpeaking(True)
    assert tx.next_at == 0.5
