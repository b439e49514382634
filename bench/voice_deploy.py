"""Audio through a rollout: one guild listening while `shardline restart --rolling` replaces
every shard process (each resuming) and `shardline deploy` every application process.

Measured at the receiver (the emulator, its own process, stamps each RTP packet's arrival),
side by side in one run: the same session's steady playback just before, then the window
from the rollout's request to its end. Per window: packets, packets missing (holes in the
RTP sequence), the longest silence between two packets, and how late packets arrive behind
their 20 ms schedule (p99, max). Voice processes are kept through a rollout, so the bound
docs/resharding.md states is: no packet lost and no added gap.

    .venv/bin/python bench/voice_deploy.py [--shards 2] [--apps 2] [--steady 5]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import EmulatorProcess, SupervisorProcess

from ipc.client import request_sync
from ipc.messages import Command, ErrorReply, Reply
from ipc.requests import Deploy, JoinVoice, PlayAudio, RestartShards

FRAME = 0.020


def tone_pcm(seconds: float) -> bytes:
    n = int(48_000 * seconds)
    return b"".join(
        struct.pack("<hh", v, v)
        for v in (int(5000 * math.sin(2 * math.pi * 440 * i / 48_000)) for i in range(n))
    )


def window(packets: list[list[Any]]) -> dict[str, float]:
    """Packets, holes in their sequence, the longest silence, and lateness (ms)."""
    if len(packets) < 2:
        return {"packets": len(packets), "missing": 0, "gap": 0.0, "p99": 0.0, "max": 0.0}
    seqs = [p[0] for p in packets]
    missing = sum(((b - a) % 65536) - 1 for a, b in itertools.pairwise(seqs))
    arrivals = [p[2] for p in packets]
    gap = max(b - a for a, b in itertools.pairwise(arrivals)) * 1000
    start = arrivals[0]
    index, late = 0, []
    last = seqs[0]
    for seq, arrival in zip(seqs, arrivals, strict=True):
        index += (seq - last) % 65536
        last = seq
        late.append((arrival - (start + index * FRAME)) * 1000)
    floor = sorted(late)[max(0, len(late) // 100)]  # anchored at the 1st percentile
    late = sorted(v - floor for v in late)
    return {
        "packets": len(packets),
        "missing": missing,
        "gap": gap,
        "p99": late[min(len(late) - 1, int(len(late) * 0.99))],
        "max": late[-1],
    }


def show(label: str, w: dict[str, float], seconds: float) -> None:
    print(
        f"  {label:<34} {seconds:5.1f} s  {int(w['packets']):5d} packets  "
        f"{int(w['missing'])} missing  longest gap {w['gap']:6.1f} ms  "
        f"late p99 {w['p99']:5.2f} ms  max {w['max']:6.2f} ms",
        flush=True,
    )


class Rollout:
    def __init__(self, emu: EmulatorProcess, shards: int, apps: int) -> None:
        self.emu = emu
        self.sup = SupervisorProcess(
            emu,
            shards=f"count = {shards}",
            extra=f'[[apps]]\nmodule = "examples.bot"\nprocesses = {apps}\n',
        )
        self.sup.wait_all_ready()

    def request(self, command: Command) -> Reply:
        reply = request_sync(self.sup.commands, command, timeout=10)
        if isinstance(reply, ErrorReply):
            raise RuntimeError(f"{command.type_name}: {reply.error}")
        return reply

    def pids(self) -> tuple[set[int], set[int], int | None]:
        status = self.sup.status() or {}
        shards = {s["pid"] for s in status.get("shards", []) if s.get("pid")}
        apps = {a["pid"] for a in status.get("apps", []) if a.get("pid")}
        voice = next((v.get("pid") for v in status.get("voice", [])), None)
        return shards, apps, voice

    def all_ready(self) -> bool:
        status = self.sup.status() or {}
        return all(s["state"] == "ready" for s in status.get("shards", []))

    def packets(self, guild: int) -> list[list[Any]]:
        reply = self.emu.post("voice_packets", {"guild_id": guild, "clear": True})
        return [p for s in reply["sessions"] for p in s["packets"]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--apps", type=int, default=2, help="examples.bot processes to deploy")
    p.add_argument("--steady", type=float, default=5.0, help="seconds of steady playback")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shardline-voice-deploy-"))
    path = tmp / "tone.pcm"
    path.write_bytes(tone_pcm(120.0))
    print(
        f"voice through a rollout (machine: {os.cpu_count()} cores; {args.shards} shards, "
        f"{args.apps} app processes); measured at the emulator"
    )
    emu = EmulatorProcess(guilds=8, shards=args.shards)
    rollout: Rollout | None = None
    try:
        rollout = Rollout(emu, args.shards, args.apps)
        state = emu.state()
        guild = int(state["guild_ids"][0])
        channel = int(state["voice_channels"][str(guild)])
        rollout.request(JoinVoice(guild_id=guild, channel_id=channel))
        deadline = time.monotonic() + 60
        while rollout.pids()[2] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # connected: its first packets then flow
        rollout.request(PlayAudio(guild_id=guild, path=str(path)))
        time.sleep(1.0)
        rollout.packets(guild)  # the start of playback is not part of either window
        time.sleep(args.steady)
        steady = rollout.packets(guild)
        shards, apps, voice = rollout.pids()
        started = time.monotonic()
        rollout.request(RestartShards(rolling=True))
        rollout.request(Deploy())
        deadline = started + 180
        while time.monotonic() < deadline:
            now_shards, now_apps, _ = rollout.pids()
            if (
                len(now_shards) == len(shards)
                and not now_shards & shards
                and len(now_apps) == len(apps)
                and not now_apps & apps
                and rollout.all_ready()
            ):
                break
            time.sleep(0.1)
        else:
            print("  the rollout did not finish within 180 s", flush=True)
        took = time.monotonic() - started
        during = rollout.packets(guild)
        kept = rollout.pids()[2] == voice
        show("steady playback", window(steady), args.steady)
        show("rolling restart + deploy", window(during), took)
        print(f"  voice process kept through the rollout: {kept}", flush=True)
    finally:
        if rollout is not None:
            rollout.sup.close()
        emu.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
