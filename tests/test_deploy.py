"""deploy/: every command line parses with the real CLI, every config loads with the real
loader, and no file names a flag or a config key that does not exist."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq

from runtime.cli import build_parser
from runtime.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def parses(argv: list[str]) -> Any:
    """The CLI's own parser on ``argv`` (a wrong flag fails the test, not exits it)."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"the CLI refuses {argv}") from exc


def config_keys() -> set[str]:
    """Every ``section.key`` the loader reads (the production example sets them all)."""
    example = tomllib.loads((ROOT / "config/production.example.toml").read_text())
    return {f"{s}.{k}" for s, table in example.items() if isinstance(table, dict) for k in table}


def named_keys(text: str) -> set[str]:
    """``section.key`` names a file mentions in prose (comments), for the sections we have."""
    sections = {key.split(".")[0] for key in config_keys()}
    found = re.findall(r"\b([a-z]+)\.([a-z_]+)\b", text)
    return {f"{s}.{k}" for s, k in found if s in sections}


def test_the_systemd_unit_runs_a_real_command_with_a_loadable_config() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    text = (DEPLOY / "shardline.service").read_text()
    unit.read_string(text)
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/shardline")
    args = parses(argv[1:])
    assert args.func.__name__ == "_cmd_run" and args.config == "/etc/shardline/shardline.toml"
    assert service["EnvironmentFile"] == "/etc/shardline/shardline.env"  # the token
    assert "DISCORD_TOKEN=" not in service.get("Environment", "")
    config = parse_config(tomllib.loads((DEPLOY / "shardline.toml").read_text()))
    assert str(config.ipc.resolved_runtime_dir()) == "/run/" + service["RuntimeDirectory"]
    assert service["RuntimeDirectoryPreserve"] == "yes"  # saved sessions survive a restart
    # the commented set-up commands parse too, and named keys exist
    for line in text.splitlines():
        if "bin/shardline " in line and line.startswith("#"):
            parses(shlex.split(line.split("bin/shardline", 1)[1]))
    assert named_keys(text) <= config_keys()


def test_the_container_image_runs_a_real_command() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    instructions = re.findall(r"^(ENTRYPOINT|CMD) (\[.*\])$", text, re.M)
    found = {name: json.loads(value) for name, value in instructions if name != "HEALTHCHECK"}
    assert found["ENTRYPOINT"] == ["shardline"]
    args = parses(found["CMD"])
    assert args.metrics_listen == "0.0.0.0:9464"
    for source in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
    assert "DISCORD_TOKEN=" not in text
    assert named_keys(text) <= config_keys()


def test_the_kubernetes_example_parses_and_names_real_flags_and_keys() -> None:
    documents = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in documents}
    assert {"ConfigMap", "Service", "StatefulSet"} <= set(kinds)
    config = parse_config(tomllib.loads(kinds["ConfigMap"]["data"]["shardline.toml"]))
    spec = kinds["StatefulSet"]["spec"]
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    per_pod = int(env["SHARDS_PER_POD"])
    assert spec["replicas"] * per_pod == config.shards.count  # the split covers every shard
    script = container["args"][0]
    for index in range(spec["replicas"]):  # what the shell runs in each pod
        first = index * per_pod
        command = (
            script.replace("$((POD_INDEX * SHARDS_PER_POD))", str(first))
            .replace("$((first + SHARDS_PER_POD - 1))", str(first + per_pod - 1))
            .replace("$first", str(first))
        )
        argv = shlex.split(command.split("exec shardline", 1)[1])
        args = parses(argv)
        assert args.shard_ids == f"{first}-{first + per_pod - 1}"
    probes = {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    assert probes == {"/healthz", "/readyz"}
    text = (DEPLOY / "kubernetes.yaml").read_text()
    assert named_keys(text) <= config_keys()


def test_the_kubernetes_fleet_example_runs_hosts_of_one_fleet_through_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = (DEPLOY / "kubernetes-cluster.yaml").read_text()
    documents = [d for d in yaml.safe_load_all(text) if d]
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    public, secret = (k.decode() for k in zmq.curve_keypair())
    monkeypatch.setenv("SHARDLINE_CURVE_PUBLIC_KEY", public)  # as the pod's Secret gives them
    monkeypatch.setenv("SHARDLINE_CURVE_SECRET_KEY", secret)
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    config = parse_config(
        tomllib.loads(kinds[("ConfigMap", "shardline-config")]["data"]["shardline.toml"])
    )
    assert config.cluster.enabled and config.cluster.shards is None  # "auto"
    assert "${REDIS_PASSWORD}" in config.cluster.redis_url  # the password is not in the file
    assert config.cluster.redis_url.split("@")[1].startswith("shardline-redis:")
    assert ("Service", "shardline-redis") in kinds and ("Deployment", "shardline-redis") in kinds
    pod = kinds[("StatefulSet", "shardline")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = parses(container["args"])
    assert args.metrics_listen == "0.0.0.0:9464"
    env = {e["name"] for e in container["env"]}
    assert {"DISCORD_TOKEN", "REDIS_PASSWORD", "SHARDLINE_CURVE_SECRET_KEY", "POD_IP"} <= env
    assert named_keys(text) <= config_keys()
    # the pods reach each other over tcp:// with CURVE, the secret key not in the file
    assert config.ipc.curve_secret_key == secret and secret not in text
    assert (
        config.cluster.peer_listen.startswith("tcp://") and config.cluster.advertise == "10.1.2.3"
    )
    ports = {p["containerPort"] for p in container["ports"]}
    assert {5555, 5556, 5557} <= ports
