"""What the 20 ms send clock does, as data: the voice session's loop asks :meth:`due` at
:attr:`next_at` and performs what comes back (SPEAKING on the websocket, frames on UDP).

A track starts with SPEAKING 1 and its first frame at once; frames follow on absolute
deadlines (:class:`~voiceworker.clock.SendClock`). A track that ends, or a pause, sends five
silence frames (so decoders do not glitch) and then SPEAKING 0. A resume restarts the clock
and tells RTP how many frame times passed. Sans-I/O: no sleeping, no sockets; the source is
read one frame ahead (a long file starts at once, and the next frame is encoded right after
a send, not in the moment its deadline comes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from voiceworker.audio import SILENCE, AudioSource
from voiceworker.clock import FRAME, LatenessHistogram, SendClock

__all__ = [
    "SILENCE_FRAMES",
    "SendFrame",
    "SetSpeaking",
    "SkipFrames",
    "TrackDone",
    "Transmitter",
    "TxAction",
]

SILENCE_FRAMES = 5


@dataclass(frozen=True, slots=True)
class SendFrame:
    opus: bytes


@dataclass(frozen=True, slots=True)
class SetSpeaking:
    on: bool


@dataclass(frozen=True, slots=True)
class SkipFrames:
    """Frame times that passed unsent (a pause): the RTP timestamp moves on by them."""

    frames: int


@dataclass(frozen=True, slots=True)
class TrackDone:
    """A track is over: ``frames`` sent (silence included); ``error`` when it could not be
    read (ffmpeg failed), ``stopped`` when it was stopped or replaced."""

    source: AudioSource
    frames: int
    stopped: bool = False
    error: str | None = None


TxAction = SendFrame | SetSpeaking | SkipFrames | TrackDone


class _Phase(Enum):
    IDLE = "idle"
    PLAYING = "playing"
    PAUSING = "pausing"  # silence frames, then quiet until resumed
    PAUSED = "paused"
    ENDING = "ending"  # the source ended: silence frames, then the track is done


_QUIET = frozenset((_Phase.IDLE, _Phase.PAUSED))


class Transmitter:
    def __init__(self) -> None:
        self.source: AudioSource | None = None
        self.clock: SendClock | None = None  # the current (or last) track's clock
        self.lateness = LatenessHistogram()  # every frame's, across tracks
        self._phase = _Phase.IDLE
        self._frames = 0  # of the current track
        self._silence_left = 0
        self._paused_at: float | None = None
        self._wants_pause = False
        self._error: str | None = None
        self._next: bytes | None = None  # read ahead: what goes out at the next deadline
        self._exhausted = False  # the source has ended (or failed)

    @property
    def next_at(self) -> float | None:
        """When :meth:`due` has the next frame (None: nothing to send)."""
        clock = self.clock
        if clock is None or self._phase in _QUIET:
            return None
        return clock.start + clock.sent * FRAME  # clock.deadline(), inlined: every frame

    @property
    def playing(self) -> bool:
        return self.source is not None

    @property
    def paused(self) -> bool:
        return self._wants_pause

    def play(self, source: AudioSource, now: float) -> list[TxAction]:
        """Start ``source`` now (what played before ends, stopped)."""
        actions = self.stop()
        self.source = source
        self._frames = 0
        self._error = None
        self._next = None
        self._exhausted = False
        self.clock = SendClock(now)
        if self._wants_pause:
            self._phase = _Phase.PAUSED
            self._paused_at = now
            return actions
        self._phase = _Phase.PLAYING
        self._read_ahead()
        return [*actions, SetSpeaking(True)]

    def stop(self) -> list[TxAction]:
        """End the current track at once (no silence): SPEAKING 0 if it was on."""
        source = self.source
        if source is None:
            return []
        speaking = self._phase in (_Phase.PLAYING, _Phase.PAUSING, _Phase.ENDING)
        self.source = None
        self._phase = _Phase.IDLE
        done = TrackDone(source, self._frames, stopped=True)
        return [SetSpeaking(False), done] if speaking else [done]

    def pause(self) -> None:
        """Stop sending after the current frame (with five silence frames)."""
        self._wants_pause = True
        if self._phase is _Phase.PLAYING:
            self._phase = _Phase.PAUSING
            self._silence_left = SILENCE_FRAMES

    def resume(self, now: float) -> list[TxAction]:
        self._wants_pause = False
        if self._phase is _Phase.PAUSING:  # still in its silence: just carry on
            self._phase = _Phase.PLAYING
            return []
        if self._phase is not _Phase.PAUSED or self.clock is None:
            return []
        self._phase = _Phase.PLAYING
        actions: list[TxAction] = []
        if self._paused_at is not None:
            actions.append(SkipFrames(int((now - self._paused_at) / FRAME)))
        self._paused_at = None
        self.clock.restart(now)
        self._read_ahead()
        actions.append(SetSpeaking(True))
        return actions

    def due(self, now: float) -> list[TxAction]:
        """The frame whose deadline has come (call at or after :attr:`next_at`)."""
        phase = self._phase
        if phase is _Phase.PLAYING:
            self._read_ahead()  # normally done already, after the last send
            frame, self._next = self._next, None
            if frame is not None:
                return [self._send(frame)]
            self._phase = _Phase.ENDING
            self._silence_left = SILENCE_FRAMES
            phase = _Phase.ENDING
        if phase in (_Phase.PAUSING, _Phase.ENDING):
            actions: list[TxAction] = [self._send(SILENCE)]
            self._silence_left -= 1
            if self._silence_left > 0:
                return actions
            actions.append(SetSpeaking(False))
            if phase is _Phase.PAUSING:
                self._phase = _Phase.PAUSED
                self._paused_at = now
                return actions
            source, self.source = self.source, None
            self._phase = _Phase.IDLE
            assert source is not None
            actions.append(TrackDone(source, self._frames, error=self._error))
            return actions
        return []

    def sent_at(self, now: float) -> None:
        """The frame :meth:`due` gave went out at ``now`` (its lateness is measured); the
        next one is read now, while there is time before its deadline."""
        if self.clock is not None:
            self.lateness.observe(self.clock.sent_at(now))
        if self._phase is _Phase.PLAYING:
            self._read_ahead()

    def _read_ahead(self) -> None:
        if self._next is not None or self._exhausted or self.source is None:
            return
        try:
            self._next = self.source.read()
        except (OSError, ValueError) as exc:
            self._error = str(exc)
            self._next = None
        if self._next is None:
            self._exhausted = True

    def _send(self, frame: bytes) -> SendFrame:
        self._frames += 1
        return SendFrame(frame)
