"""btmm-resolve-tunnel against the embedded server, through the real console scripts."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import script
from tests.server.serve_proc import ServeProc


@pytest.fixture
def served(tmp_path: Path, account_file: Path,
           btmm_env: dict[str, str]) -> Iterator[tuple[ServeProc, dict[str, str]]]:
    server = ServeProc(tmp_path, account_file).start()
    env = dict(btmm_env, BTMM_ACCOUNT=str(account_file))
    try:
        yield server, env
    finally:
        server.stop()


def cmd(argv: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False)


def register(server: ServeProc, env: dict[str, str], label: str, state: Path,
             *extra: str) -> dict[str, object]:
    r = cmd([script("btmm-register"), "--server", f"127.0.0.1:{server.port}", "--host", label,
             "--state-dir", str(state), "--name", f"{label} box", "--service", "_http._tcp:8080",
             "--once", "--json", *extra], env)
    assert r.returncode == 0, r.stderr
    rec: dict[str, object] = json.loads(r.stdout.splitlines()[0])
    return rec


def test_browse_into_resolve_tunnel(served: tuple[ServeProc, dict[str, str]], tmp_path: Path) -> None:
    server, env = served
    register(server, env, "bobs-imac", tmp_path / "imac", "--outer", "198.18.1.2:14500")
    register(server, env, "nas", tmp_path / "nas")  # registered, but no outer endpoint
    browse = cmd([script("btmm-browse"), "--server", f"127.0.0.1:{server.port}", "-t", "_http._tcp",
                  "--json"], env)
    assert browse.returncode == 0, browse.stderr
    resolved = cmd([script("btmm-resolve-tunnel"), "--server", f"127.0.0.1:{server.port}",
                    "--state-dir", str(tmp_path / "laptop"), "--json"], env, stdin=browse.stdout)
    assert resolved.returncode == 1, resolved.stderr  # one host has no endpoint
    recs = {r.get("host") or r["input"]["host"]: r for r in map(json.loads, resolved.stdout.splitlines())}
    ep = recs["bobs-imac.bob.members.example"]
    assert ep["type"] == "tunnel-endpoint"
    assert ep["outer_address"] == "198.18.1.2" and ep["outer_port"] == 14500
    assert ep["inner"].startswith("fd") and ep["ike_id"] == "bobs-imac.bob.members.example"
    assert ep["autotunnel_name"].startswith("AutoTunnel-")
    assert ep["instance"] == "bobs-imac box" and ep["service_type"] == "_http._tcp"  # passed through
    err = recs["nas.bob.members.example"]
    assert err["type"] == "error" and "no outer endpoint" in err["error"] and "--outer" in err["error"]


def test_resolve_host_flag_self_and_missing(served: tuple[ServeProc, dict[str, str]], tmp_path: Path) -> None:
    server, env = served
    register(server, env, "bobs-imac", tmp_path / "imac", "--outer", "198.18.1.2:4500")
    base = [script("btmm-resolve-tunnel"), "--server", f"127.0.0.1:{server.port}", "--json"]
    ok = cmd([*base, "--host", "bobs-imac", "--state-dir", str(tmp_path / "laptop")], env)
    assert ok.returncode == 0 and json.loads(ok.stdout)["outer_port"] == 4500
    itself = cmd([*base, "--host", "bobs-imac.bob.members.example.", "--state-dir", str(tmp_path / "imac")],
                 env)
    assert itself.returncode == 1 and "this host itself" in json.loads(itself.stdout)["error"]
    missing = cmd([*base, "--host", "ghost", "--state-dir", str(tmp_path / "laptop")], env)
    assert missing.returncode == 1 and "no AAAA" in json.loads(missing.stdout)["error"]
    broken = cmd([*base, "--state-dir", str(tmp_path / "laptop")], env, stdin="{oops\n")
    assert broken.returncode == 1 and "line 1" in json.loads(broken.stdout)["error"]


def test_resolve_unreachable_server(account_file: Path, btmm_env: dict[str, str]) -> None:
    env = dict(btmm_env, BTMM_ACCOUNT=str(account_file))
    r = cmd([script("btmm-resolve-tunnel"), "--server", "127.0.0.1:9", "--timeout", "0.3", "--host", "x",
             "--json"], env)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
