"""Soak: a fleet under steady load for a long while, with shard processes killed now and
then and one application that keeps stalling. Prints, every interval, the RSS of every
process, reconnects, drops and gaps; at the end, whether memory stayed flat and whether any
dispatch was lost outside the bus's counted drop policy.

    python bench/soak.py [--minutes 20] [--shards 4] [--rate 250] [--kill-every 60]

Feed: the emulator's MESSAGE_CREATE stream (``--rate`` per shard per second). Two apps
subscribe to everything: ``steady`` reads as fast as it can; ``stalling`` blocks its loop
``--stall-for`` seconds every ``--stall-every`` seconds. A shard process is SIGKILLed every
``--kill-every`` seconds (it is respawned and RESUMEs: Discord replays what it missed).
Goal (issue 11): flat memory; ``steady`` loses nothing; ``stalling`` loses only what the
bus dropped and counted for it (its gaps == the bus's ``dropped`` for it).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from harness import FEED, ROOT, EmulatorProcess, SupervisorProcess, rss_mb


class App:
    """One soak_app.py process; its last JSON line is kept."""

    def __init__(self, sup: SupervisorProcess, name: str, extra: list[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [
                *(sys.executable, str(ROOT / "bench" / "soak_app.py")),
                *(sup.events, sup.commands, name, *extra),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.last: dict[str, Any] = {}
        self.peak_rss = 0.0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.last = json.loads(line)
                self.peak_rss = max(self.peak_rss, float(self.last.get("rss_mb", 0)))
            except ValueError:
                continue

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--rate", type=float, default=250.0, help="dispatches per shard per second")
    p.add_argument("--kill-every", type=float, default=60.0, help="seconds between shard kills")
    p.add_argument("--stall-every", type=float, default=30.0)
    p.add_argument("--stall-for", type=float, default=8.0)
    p.add_argument("--report-every", type=float, default=60.0)
    p.add_argument(
        "--buffer", type=int, default=8 * 1024 * 1024, help="bus.subscriber_buffer_bytes"
    )
    args = p.parse_args()
    if args.minutes <= 0 or args.shards <= 0 or args.rate <= 0:
        p.error("--minutes, --shards and --rate must be positive")
    print(FEED, flush=True)
    seconds = args.minutes * 60
    print(
        f"soak: {args.shards} shards x {args.rate:g} dispatches/s for {args.minutes:g} min; "
        f"a shard killed every {args.kill_every:g} s; app 'stalling' blocks {args.stall_for:g} s "
        f"every {args.stall_every:g} s; bus buffer {args.buffer} bytes per subscriber",
        flush=True,
    )
    emu = EmulatorProcess(guilds=8 * args.shards, shards=args.shards, heartbeat_interval=5000)
    sup = SupervisorProcess(emu, extra=f"[bus]\nsubscriber_buffer_bytes = {args.buffer}\n")
    apps: list[App] = []
    try:
        sup.wait_all_ready()
        apps = [
            App(sup, "steady", []),
            App(
                sup,
                "stalling",
                ["--block-every", str(args.stall_every), "--block-for", str(args.stall_for)],
            ),
        ]
        time.sleep(3)  # the apps subscribe (a fixed pause before the feed: not a measurement)
        count = int(args.rate * seconds)
        for shard in range(args.shards):
            emu.post("stream", {"shard": shard, "rate": args.rate, "count": count})
        started = time.monotonic()
        next_kill = started + args.kill_every
        next_report = started
        kills = 0
        rows: list[dict[str, float]] = []
        print(
            "   t  supervisor  shards(max)  steady  stalling  emulator  restarts  "
            "bus_dropped  steady_gaps  stalling_gaps  delivered",
            flush=True,
        )
        while True:
            now = time.monotonic()
            status = sup.status(timeout=5.0) or {}
            shards = status.get("shards", [])
            if now >= next_kill and shards:
                victim = random.choice([s for s in shards if s.get("pid")] or [{}])
                if victim.get("pid"):
                    os.kill(victim["pid"], signal.SIGKILL)
                    kills += 1
                next_kill = now + args.kill_every
            if now >= next_report or now - started >= seconds:
                subscribers = {s["name"]: s for s in status.get("bus", {}).get("subscribers", [])}
                row = {
                    "t": now - started,
                    "supervisor": rss_mb(sup.proc.pid),
                    "shards": max((rss_mb(s.get("pid")) for s in shards), default=0.0),
                    "steady": rss_mb(apps[0].proc.pid),
                    "stalling": rss_mb(apps[1].proc.pid),
                    "emulator": rss_mb(emu.proc.pid),
                    "restarts": sum(s.get("restarts", 0) for s in shards),
                    "dropped": sum(s["dropped"] for s in subscribers.values()),
                    "steady_gaps": apps[0].last.get("gaps", 0),
                    "stalling_gaps": apps[1].last.get("gaps", 0),
                    "delivered": apps[0].last.get("messages", 0),
                }
                rows.append(row)
                print(
                    f"{row['t']:5.0f}  {row['supervisor']:7.1f} MB  {row['shards']:7.1f} MB"
                    f"  {row['steady']:5.1f}  {row['stalling']:7.1f}  {row['emulator']:7.1f}"
                    f"  {row['restarts']:8.0f}  {row['dropped']:11.0f}  {row['steady_gaps']:11.0f}"
                    f"  {row['stalling_gaps']:13.0f}  {row['delivered']:9.0f}",
                    flush=True,
                )
                next_report = now + args.report_every
                if now - started >= seconds:
                    break
            time.sleep(1.0)
        time.sleep(12)  # the last resumes replay, the apps report once more
        status = sup.status(timeout=5.0) or {}
        subscribers = {s["name"]: s for s in status.get("bus", {}).get("subscribers", [])}
        summary(rows, apps, subscribers, kills, count * args.shards)
    finally:
        for app in apps:
            app.close()
        sup.close()
        emu.close()
    return 0


def summary(
    rows: list[dict[str, float]],
    apps: list[App],
    subscribers: dict[str, Any],
    kills: int,
    sent: int,
) -> None:
    third = max(1, len(rows) // 3)
    print("memory (RSS, MB), first third -> last third of the run:")
    for key in ("supervisor", "shards", "steady", "stalling"):
        first = max(r[key] for r in rows[:third])
        last = max(r[key] for r in rows[-third:])
        print(f"  {key:<10} {first:7.1f} -> {last:7.1f}  ({last / first if first else 0:.2f}x)")
    steady, stalling = apps[0].last, apps[1].last
    dropped = subscribers.get("stalling", {}).get("dropped", 0)
    print(f"shard processes killed: {kills}; dispatches the emulator streamed: {sent}")
    print(
        f"steady:   {steady.get('messages', 0)} messages, gaps {steady.get('gaps', 0)} "
        f"(bus dropped {subscribers.get('steady', {}).get('dropped', 0)} for it)"
    )
    print(
        f"stalling: {stalling.get('messages', 0)} messages, gaps {stalling.get('gaps', 0)}, "
        f"bus dropped {dropped} for it (lost outside the policy: "
        f"{max(0, stalling.get('gaps', 0) - dropped)})"
    )


if __name__ == "__main__":
    sys.exit(main())
