"""DESIGN.md §2 import rules, checked on the source (AST), not by convention."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORES = ["ula", "dnssd_wa", "ike_lite", "esp_udp", "portmap"]
# Modules allowed to do I/O inside a core package (thin drivers), by DESIGN.md §2.
IO_DRIVERS = {
    "dnssd_wa": ("dnssd_wa/driver", "dnssd_wa/aio", "dnssd_wa/server/", "dnssd_wa/push_client"),
    "esp_udp": ("esp_udp/tun", "esp_udp/datapath", "esp_udp/io", "esp_udp/worker"),
    "portmap": ("portmap/driver", "portmap/gateway"),
}
IO_MODULES = {"socket", "asyncio", "time", "rich", "selectors", "ssl"}
MUTUAL = {"ula", "ike_lite", "esp_udp"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def uses_urandom(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.Attribute) and n.attr == "urandom" for n in ast.walk(tree)) or any(
        isinstance(n, ast.alias) and n.name == "urandom" for n in ast.walk(tree))


def core_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", CORES)
def test_cores_never_import_tools(package: str) -> None:
    for path in core_files(package):
        bad = {n for n in imports_of(path) if n == "tools" or n.startswith("tools.")}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


@pytest.mark.parametrize("package", sorted(MUTUAL))
def test_ula_ike_esp_independent(package: str) -> None:
    others = MUTUAL - {package}
    for path in core_files(package):
        bad = {n for n in imports_of(path) if n.split(".")[0] in others}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


@pytest.mark.parametrize("package", CORES)
def test_cores_sans_io(package: str) -> None:
    allowed = IO_DRIVERS.get(package, ())
    for path in core_files(package):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(allowed):
            continue
        bad = {n for n in imports_of(path) if n.split(".")[0] in IO_MODULES}
        assert not bad, f"{rel} (a sans-I/O core module) imports {bad}"
        assert not uses_urandom(path), f"{rel} calls os.urandom; take randomness as a parameter"


def test_rule_checker_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import socket\nfrom tools.cli import run\nimport os\nx = os.urandom(4)\n")
    assert "socket" in imports_of(bad) and "tools.cli" in imports_of(bad)
    assert uses_urandom(bad)
