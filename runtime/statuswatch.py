"""``shardline status --watch``: the status table redrawn in place every second, under a
header with the fleet's totals, until Ctrl-C. A supervisor that stops answering is said in
the header (the last table stays, marked) and asked again with growing pauses."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TextIO

from ipc.states import ShardState
from ipc.status import FleetStatus
from runtime.statusview import format_status

__all__ = ["StatusUnavailable", "render", "watch"]

HOME_AND_CLEAR = "\x1b[H\x1b[2J"  # first frame: a clean screen
HOME = "\x1b[H"
CLEAR_LINE_END = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
MAX_RETRY_PAUSE = 5.0


class StatusUnavailable(Exception):
    """The supervisor did not answer with a status (the message says why)."""


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def render(status: FleetStatus | None, problem: str, clock_text: str) -> str:
    """One frame: a header line with the totals, then the table (the last one known, when
    the supervisor is not answering)."""
    if status is None:
        head = f"shardline status · {clock_text} · waiting for the supervisor: {problem}"
        return head + "\n(Ctrl-C quits)"
    ready = sum(1 for s in status.shards if s.state is ShardState.READY)
    rate = sum(s.events_per_second for s in status.shards)
    latencies = [s.latency for s in status.shards if s.latency is not None]
    latency = f"{sum(latencies) / len(latencies):.1f}ms" if latencies else "-"
    head = (
        f"shardline status · {clock_text} · {ready}/{len(status.shards)} shards ready · "
        f"{rate:,.1f} events/s · mean latency {latency} · identify budget "
        f"{status.identifies_remaining} · up {_duration(status.uptime)}"
    )
    lines = [head]
    if problem:
        lines.append(f"!! supervisor not answering ({problem}); the table below is the last known")
    lines.append(format_status(status))
    lines.append("(Ctrl-C quits)")
    return "\n".join(lines)


def watch(
    fetch: Callable[[], FleetStatus],
    out: TextIO,
    *,
    interval: float = 1.0,
    tty: bool = True,
    frames: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Draw a frame every ``interval`` seconds until interrupted (or ``frames`` drawn).
    On a terminal each frame replaces the last; otherwise frames follow each other."""
    last: FleetStatus | None = None
    pause = interval
    drawn = 0
    try:
        if tty:
            out.write(HIDE_CURSOR + HOME_AND_CLEAR)
        while frames is None or drawn < frames:
            problem = ""
            try:
                last = fetch()
                pause = interval
            except StatusUnavailable as exc:
                problem = str(exc)
                pause = min(MAX_RETRY_PAUSE, max(interval, pause * 2))
            frame = render(last, problem, time.strftime("%H:%M:%S"))
            if tty:
                body = "\n".join(line + CLEAR_LINE_END for line in frame.split("\n"))
                out.write(HOME + body + "\n" + CLEAR_BELOW)
            else:
                out.write(frame + "\n\n")
            out.flush()
            drawn += 1
            if frames is None or drawn < frames:
                sleep(pause)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader went away (`| head`): done, quietly
        return 0
    finally:
        if tty:
            with contextlib.suppress(OSError):
                out.write(SHOW_CURSOR)
                out.flush()
    return 0
