"""What the benchmarks share: the emulator and the supervisor as processes, driven from here.

Every benchmark runs its subjects as separate processes, as in production, so that each has
its own interpreter and core; this module starts and stops them.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# What the benches that stream or blast messages feed, said first in their output.
FEED = (
    "feed: the emulator's Discord-shaped MESSAGE_CREATEs (emulator/feed.py: ~1.3 KB, "
    "a fifth with replies, mentions, attachments or embeds)"
)
sys.path.insert(0, str(ROOT))

from emulator.world import DEFAULT_TOKEN  # noqa: E402
from ipc.client import CommandError, request_sync  # noqa: E402
from ipc.requests import GetStatus, StatusReply  # noqa: E402

__all__ = ["ROOT", "EmulatorProcess", "SupervisorProcess", "cpu_seconds"]


def rss_mb(pid: int | None) -> float:
    """A process's resident memory now (MB); 0 once it is gone."""
    if not pid:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EmulatorProcess:
    """``shardline emulator`` with its control API at hand."""

    def __init__(self, **options: Any) -> None:
        args = [sys.executable, "-m", "runtime.cli", "emulator"]
        for key, value in {"identify_interval": 0, **options}.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        self.rest = line[2].split("=", 1)[1]
        self.gateway = line[3].split("=", 1)[1]
        self.control = self.rest.removesuffix("/api/v10") + "/_emulator"
        self.token = DEFAULT_TOKEN
        # The emulator stands in for Discord's servers, which do not share our cores: give
        # it the CPU first (when allowed), so that the fleet under test cannot starve it
        # into answering late and skew what is measured.
        try:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, -5)
        except OSError:
            pass
        self.voice_ca = str(self.state().get("voice_ca", ""))  # the voice server's certificate

    def post(self, action: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            f"{self.control}/{action}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=600) as response:
            return json.loads(response.read())

    def state(self) -> Any:
        with urllib.request.urlopen(f"{self.control}/state", timeout=10) as response:
            return json.loads(response.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class SupervisorProcess:
    """``shardline run`` against an emulator, with a config written for it."""

    def __init__(
        self,
        emu: EmulatorProcess,
        *,
        shards: str = "",
        identify_interval: float = 0.1,
        extra: str = "",
    ) -> None:
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="shardline-bench-"))
        config = self.runtime_dir / "bench.toml"
        config.write_text(
            f'[discord]\nrest_url = "{emu.rest}"\nca_file = "{emu.voice_ca}"\n'
            f"[shards]\n{shards}\n"
            f'[ipc]\nruntime_dir = "{self.runtime_dir}"\n[log]\nlevel = "warning"\n{extra}'
        )
        self.events = f"ipc://{self.runtime_dir}/events.sock"
        self.commands = f"ipc://{self.runtime_dir}/commands.sock"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime.cli",
                "run",
                "--config",
                str(config),
                "--identify-interval",
                str(identify_interval),
            ],
            env={**os.environ, "DISCORD_TOKEN": emu.token},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The supervisor's status, or None while it is not answering yet."""
        try:
            reply = request_sync(self.commands, GetStatus(), timeout=timeout)
        except CommandError:
            return None
        return dict(reply.raw["status"]) if isinstance(reply, StatusReply) else None

    def wait_all_ready(self, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status and status["shards"] and all(s["state"] == "ready" for s in status["shards"]):
                return status
            time.sleep(0.05)
        raise TimeoutError("the fleet never became ready")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)  # nothing left in the temp dir
