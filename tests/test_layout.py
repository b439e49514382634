"""The house rules of ``DESIGN.md`` as a test: which package may import which, no import
cycle in ``runtime/``, no dispatch on type-name strings outside ``ipc/``, and the wire framed
only in ``ipc/``."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"conn", "ipc", "runtime", "shards", "voiceworker", "emulator"}
# package -> the packages of ours it may import
ALLOWED = {
    "conn": set(),
    "ipc": set(),
    "shards": {"conn", "ipc"},
    "voiceworker": {"conn", "ipc"},
    "runtime": {"conn", "ipc", "emulator"},  # emulator: only the CLI's demo/emulator entries
    "emulator": set(),
}


def imports(path: Path) -> set[str]:
    """Every module this file imports (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_the_house_rules_allow(package: str) -> None:
    wrong = []
    for path in files(package):
        for module in imports(path):
            top = module.split(".")[0]
            if top in OURS and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_runtime_imports_the_emulator_only_for_the_demo_and_the_emulator_command() -> None:
    users = {
        str(path.relative_to(ROOT))
        for path in files("runtime")
        if any(m.split(".")[0] == "emulator" for m in imports(path))
    }
    assert users <= {"runtime/cli.py", "runtime/demo.py"}


def test_a_single_host_supervisor_loads_neither_redis_nor_prometheus() -> None:
    """They are loaded when ``[cluster]`` or ``[metrics]`` is configured: a supervisor
    without them is ~6 MB smaller (the event path's memory goal, docs/benchmarks.md)."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, runtime.cli, runtime.supervisor; "
            "print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'redis', 'prometheus_client'}))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"


def test_no_import_cycle_in_runtime() -> None:
    graph = {
        path.stem: {m.split(".")[1] for m in imports(path) if m.startswith("runtime.")}
        for path in files("runtime")
    }

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError(" -> ".join([*trail[trail.index(node) :], node]))
        for nxt in graph.get(node, set()):
            visit(nxt, [*trail, node])

    for module in graph:
        visit(module, [])


@pytest.mark.parametrize("package", ["runtime", "shards", "voiceworker"])
def test_no_type_name_strings_outside_ipc(package: str) -> None:
    pattern = re.compile(r"[\"']shardline\.")
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files(package)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and "getLogger" not in line
    ]
    assert hits == []


@pytest.mark.parametrize("package", ["runtime", "shards", "voiceworker", "conn"])
def test_no_module_outside_ipc_frames_a_message(package: str) -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in files(package)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if ".type_name.encode()" in line or "orjson.dumps(message.raw)" in line
    ]
    assert hits == []
