"""btmm-tunnel-up refuses bad input with one line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import script
from tools import tunnel_up
from tools.cli import EXIT_USAGE, Fatal
from tools.netns import Lab

PEER: dict[str, Any] = {
    "inner": "fd00:7::2", "outer": "198.18.7.2:4500", "suite": "aes256gcm16",
    "spi_in": "c0ffee01", "spi_out": "c0ffee02", "key_in": "11" * 36, "key_out": "22" * 36,
}


def write(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content)
    os.chmod(path, mode)
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([script("btmm-tunnel-up"), *args], capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL, check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == EXIT_USAGE, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("btmm-tunnel-up: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def good_file(tmp_path: Path, **local: Any) -> Path:
    body = {"local": {"inner": "fd00:7::1", "port": 4500, **local}, "peers": [PEER]}
    return write(tmp_path / "keys.json", json.dumps(body))


def test_group_readable_key_file(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.json", json.dumps({"local": {}, "peers": []}), 0o644)
    assert_one_line_error(run_cli("--static-keys", str(path)), "chmod 600")


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "not JSON"),
    ('{"local": {"inner": "fd00:7::1"}}', "must be"),
    ('{"local": {"inner": "nonsense"}, "peers": []}', "local.inner"),
    ('{"local": {"inner": "fd00:7::1", "inner4": "fd00::9"}, "peers": []}', "local.inner4"),
    (json.dumps({"local": {"inner": "fd00:7::1", "inner4": "10.97.0.1"},
                 "peers": [dict(PEER, inner4="10.97.0.1")]}), "inner4 10.97.0.1 is used twice"),
    ('{"local": {"inner": "fd00:7::1"}, "peers": []}', "no peers"),
    (json.dumps({"local": {"inner": "fd00:7::1"}, "peers": [dict(PEER, key_in="11")]}),
     "peer 1: key_in has 1 bytes"),
    (json.dumps({"local": {"inner": "fd00:7::1"}, "peers": [dict(PEER, suite="3des")]}),
     "peer 1: suite"),
    (json.dumps({"local": {"inner": "fd00:7::1"}, "peers": [PEER, PEER]}), "used twice"),
    (json.dumps({"local": {"inner": "fd00:7::1"}, "peers": [PEER, dict(PEER, inner="fd00:7::3")]}),
     "spi_in c0ffee01 is used twice"),
])
def test_bad_key_files(tmp_path: Path, content: str, needle: str) -> None:
    path = write(tmp_path / "keys.json", content)
    assert_one_line_error(run_cli("--static-keys", str(path)), needle)


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("--static-keys", str(tmp_path / "nope.json")), "does not exist")


def test_static_and_listen_exclusive(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("--static-keys", str(good_file(tmp_path)), "--listen"), "exclude")


def test_bad_mtu_and_tun_name(tmp_path: Path) -> None:
    path = good_file(tmp_path)
    assert_one_line_error(run_cli("--static-keys", str(path), "--mtu", "100"), "--mtu")
    assert_one_line_error(run_cli("--static-keys", str(path), "--tun", "x" * 20), "interface name")


def test_listen_without_ike_mode_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before (or without) tools/tunnel_ike.py, IKE mode is one clear line, exit 2."""
    monkeypatch.setattr(tunnel_up, "load_ike_mode", lambda: None)
    monkeypatch.setattr("sys.argv", ["btmm-tunnel-up", "--listen"])
    with pytest.raises(Fatal) as info:
        tunnel_up.main_body()
    assert info.value.code == EXIT_USAGE and "--static-keys" in info.value.message


@pytest.mark.netns
def test_port_in_use_is_one_line(tmp_path: Path, lab: Lab) -> None:
    ns = lab.ns("busy")
    holder = lab.popen(ns, [sys.executable, "-c",
                            "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                            "s.bind(('0.0.0.0',4500)); print('bound', flush=True); time.sleep(60)"],
                       stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"bound"
    proc = lab.run(ns, [script("btmm-tunnel-up"), "--static-keys", str(good_file(tmp_path))],
                   check=False, timeout=60)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                         proc.stderr.decode())
    assert_one_line_error(result, "4500", "in use")
    assert lab.run(ns, ["ip", "link", "show", "btmm0"], check=False).returncode != 0  # cleaned up
