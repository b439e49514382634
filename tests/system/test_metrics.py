"""The supervisor's /metrics, /healthz and /readyz scraped over HTTP from a fleet on the
emulator: values move as the fleet does."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from emulator import shard_for
from runtime.config import parse_config
from tests.shards.helpers import eventually
from tests.system.test_supervisor import all_ready, emulator, fleet_with

pytestmark = pytest.mark.slow


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


ROOT = Path(__file__).resolve().parents[2]


async def exported_names(base: str) -> set[str]:
    """Every series name a scrape can hold, even of families with no series yet."""
    status, text = await asyncio.to_thread(get, f"{base}/metrics")
    assert status == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_metrics() -> set[str]:
    """The metric names deploy/grafana-dashboard.json queries."""
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    templating = [v.get("definition", "") for v in dashboard["templating"]["list"]]
    return {
        name
        for text in exprs + templating
        for name in re.findall(r"\b((?:gateway|shardline)_[a-z_]+)\b", text)
    }


async def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await asyncio.to_thread(get, f"{base}/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_and_readiness_follow_the_fleet(tmp_path: Path) -> None:
    async with emulator(shards=2) as emu:
        config = parse_config(
            {
                "discord": {"rest_url": emu.rest_url},
                "shards": {"intents": ["guilds", "guild_messages"]},
                "ipc": {"runtime_dir": str(tmp_path)},
                "restart": {"backoff_initial": 0.1, "hang_timeout": 2.0},
                "log": {"level": "warning"},
                "metrics": {"listen": "127.0.0.1:0"},
            }
        )
        async with fleet_with(config, emu, tmp_path) as sup:
            await eventually(lambda: sup.metrics is not None and all_ready(sup), timeout=30)
            assert sup.metrics is not None and sup.metrics.address is not None
            base = f"http://127.0.0.1:{sup.metrics.address[1]}"
            assert await asyncio.to_thread(get, f"{base}/healthz") == (200, "ok\n")

            async def ready() -> int:
                return (await asyncio.to_thread(get, f"{base}/readyz"))[0]

            assert await ready() == 200
            # The Grafana dashboard queries only what this supervisor exports.
            queried = dashboard_metrics()
            assert len(queried) > 20
            assert queried - await exported_names(base) == set()
            samples = await scrape(base)
            assert sample(samples, "shardline_shards_ready") == 2
            assert sample(samples, "gateway_shard_status", shard="0") == 4
            assert sample(samples, "shardline_shard_identifies_total", shard="0") == 1

            # Dispatch counters rise with injected messages.
            def created(samples: dict[Any, float]) -> float:
                name = "gateway_shard_events_total"
                return sample(samples, name, shard="0", event_type="MESSAGE_CREATE")

            before = created(samples)
            guilds = [g for g in emu.world.guild_ids if shard_for(g, 2) == 0][:3]
            for n in range(10):
                await emu.message(guilds[n % len(guilds)], f"counted {n}")
            for _ in range(100):
                if created(await scrape(base)) >= before + 10:
                    break
                await asyncio.sleep(0.2)  # the next status report (every second)
            assert created(await scrape(base)) == before + 10

            # A SIGKILLed shard: not ready while it is down, one more resume once it is back.
            resumes = sample(samples, "shardline_shard_resumes_total", shard="1")
            victim = sup.workers[1]
            assert victim.proc is not None
            os.kill(victim.proc.pid, signal.SIGKILL)
            statuses: list[int] = []
            for _ in range(200):
                statuses.append(await ready())
                if 503 in statuses and statuses[-1] == 200 and all_ready(sup):
                    break
                await asyncio.sleep(0.05)
            assert 503 in statuses and statuses[-1] == 200
            await eventually(lambda: victim.restarts == 1 and all_ready(sup), timeout=30)
            for _ in range(100):
                samples = await scrape(base)
                if sample(samples, "shardline_shard_resumes_total", shard="1") > resumes:
                    break
                await asyncio.sleep(0.2)
            assert sample(samples, "shardline_shard_resumes_total", shard="1") == resumes + 1
            assert sample(samples, "shardline_shard_restarts_total", shard="1") == 1
            assert sample(samples, "shardline_shard_identifies_total", shard="1") == 1
            assert sample(samples, "shardline_processes", kind="shard") == 2
            assert sample(samples, "shardline_process_pss_bytes", kind="shard") > 0
