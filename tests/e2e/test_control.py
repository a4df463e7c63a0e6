"""The host's one btmm-tunnel-up, used by later pipelines and by traffic (issue 8 follow-up).

One world for the module (DNS, Bob's iMac behind its NAT, a second host "vps" with a public
address, the laptop in the café). In order:

* the laptop's daemon (``--listen``) owns UDP 4500 and the TUN; a pipeline reaches the iMac
  through it (auto: the daemon answers on the control socket), a second pipeline reaches the
  VPS with ``--via``, a repeated request is answered at once;
* the daemon restarts with ``--on-demand --keep-warm 0 --idle-timeout 2``: a record is only
  armed; a TCP connection to the ULA brings the tunnel up; after the idle close a ping brings
  it back (re-resolved in DNS).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import script
from tools.account_file import load_host
from tools.cli import EXIT_REMOTE
from tools.netns import Lab
from tools.scenario import CAFE_LABEL, HOME_LABEL, Stage, World, bin_path

pytestmark = [pytest.mark.netns, pytest.mark.peer]

ENDPOINT = {"type": "tunnel-endpoint", "v": 1, "host": "x.bob.members.example", "inner": "fd00:1:2::3",
            "outer_address": "198.18.9.9", "outer_port": 4500}


def test_via_without_daemon_is_one_clear_line(tmp_path: Path, btmm_env: dict[str, str]) -> None:
    missing = tmp_path / "nobody.sock"
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))  # a socket file nobody listens on (a killed daemon's)
    s.close()
    for path in (missing, stale):
        proc = subprocess.run([script("btmm-tunnel-up"), "--via", str(path)],
                              input=json.dumps(ENDPOINT) + "\n", capture_output=True, text=True, timeout=30,
                              env=btmm_env, check=False)
        assert proc.returncode == EXIT_REMOTE, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"no btmm-tunnel-up daemon listens on {path}" in lines[0] and "--listen" in lines[0], lines
        assert proc.stdout == ""


def test_client_path_stays_light(btmm_env: dict[str, str]) -> None:
    """`btmm-tunnel-up --via` (and --help) import no crypto, DNS, netlink or rich."""
    proc = subprocess.run([str(Path(bin_path("python"))), "-X", "importtime", bin_path("btmm-tunnel-up"),
                           "--via", "/nonexistent/x.sock"], input="", capture_output=True, text=True,
                          timeout=30, env=btmm_env, check=False)
    assert proc.returncode == EXIT_REMOTE, proc.stderr[-500:]
    modules = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
               if line.startswith("import time:")}
    assert "tools" in modules  # the measurement saw our own imports
    heavy = modules & {"cryptography", "dns", "pyroute2", "rich", "esp_udp", "ike_lite", "dnssd_wa"}
    assert not heavy, heavy


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with Lab() as lab:
        w = World.create(lab, tmp_path_factory.mktemp("control-world"))
        w.create_account()
        w.start_dns()
        w.start_home()
        w.add_public_host("vps", "198.18.3.2")
        yield w


def resolve_into_tunnel_up(world: World, name: str, host: str, *flags: str) -> tuple[list[dict[str, Any]],
                                                                                       list[int | None]]:
    return world.run_pipeline(name, world.cafe_ns, "cafe", [
        [bin_path("btmm-resolve-tunnel"), "--host", host, "--json"],
        [bin_path("btmm-tunnel-up"), "--host", CAFE_LABEL, "--json", *flags],
    ])


def tunnels(records: list[dict[str, Any]], state: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "tunnel" and r.get("state") == state]


def status(world: World, pred: Any = lambda body: True, timeout: float = 3.0) -> dict[str, Any]:
    """The laptop's tunnels status (btmm-status), once ``pred`` holds (it is published twice a second)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run([bin_path("btmm-status"), "--json"], env=world.env("cafe"), capture_output=True,
                              text=True, check=False, timeout=30)
        found = {r["component"]: r for r in map(json.loads, proc.stdout.splitlines())}
        result: dict[str, Any] = found.get("tunnels", {})
        if (result and pred(result)) or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_pipelines_use_the_running_daemon(world: World) -> None:
    daemon = world.start_cafe_daemon("--listen")
    path = world.control_path("cafe")
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
    # a second daemon on the same host is refused with the way out
    second = subprocess.run([bin_path("btmm-tunnel-up"), "--host", CAFE_LABEL, "--listen"],
                            env=world.env("cafe"), capture_output=True, text=True, check=False, timeout=30)
    assert second.returncode == 2 and "already runs on this host" in second.stderr, second.stderr
    assert "--via" in second.stderr and len(second.stderr.splitlines()) == 1
    # 1. a plain pipeline: the daemon answers on the control socket, so the records go there
    recs, codes = resolve_into_tunnel_up(world, "to-imac", HOME_LABEL)
    assert codes == [0, 0], (codes, recs)
    up = tunnels(recs, "up")
    assert len(up) == 1 and up[0]["host"] == f"{HOME_LABEL}.bob.members.example", recs
    assert up[0]["setup_ms"] > 0 and up[0]["autotunnel_name"].startswith("AutoTunnel-")  # context kept
    # 2. a second pipeline, explicitly --via, reaches a second peer through the same daemon
    recs2, codes2 = resolve_into_tunnel_up(world, "to-vps", "vps", "--via")
    assert codes2 == [0, 0], (codes2, recs2)
    vps_up = tunnels(recs2, "up")
    assert len(vps_up) == 1 and vps_up[0]["host"] == "vps.bob.members.example", recs2
    for ula, who in ((up[0]["inner_remote"], "Bob’s iMac"), (vps_up[0]["inner_remote"], "Bob’s VPS")):
        body, _ = world.fetch(ula)
        assert f"hello from {who} via {up[0]['inner_local']}" in body, body
    # the daemon did the work: both tunnels are in its records and its status
    daemon.wait_for(lambda r: r.get("state") == "up" and r.get("host") == "vps.bob.members.example", 5, "vps")
    assert {r["inner_remote"] for r in tunnels(daemon.records, "up")} == {up[0]["inner_remote"],
                                                                            vps_up[0]["inner_remote"]}
    tunnels_status = status(world, lambda b: len(b["tunnels"]) == 2)
    assert tunnels_status["control"] == str(path)
    assert tunnels_status["keep_warm"] == 0.0005  # the datapath's default
    assert len(tunnels_status["tunnels"]) == 2, tunnels_status
    # 3. asking again for a peer that is up is answered at once, without a new negotiation
    again, codes3 = resolve_into_tunnel_up(world, "to-imac-again", HOME_LABEL, "--via")
    assert codes3 == [0, 0] and tunnels(again, "up")[0].get("already") is True, again
    assert tunnels(again, "up")[0]["spi_in"] == up[0]["spi_in"]
    # a host that does not exist: resolve-tunnel's error record passes through the daemon and back
    ghost, codes4 = resolve_into_tunnel_up(world, "to-ghost", "ghost", "--via")
    assert codes4 == [1, 1] and ghost[0]["type"] == "error" and "no AAAA" in ghost[0]["error"], ghost
    assert world.stop_stage("cafe-daemon")[-1] == 0
    assert not path.exists(), "the control socket outlived the daemon"


def wait_records(stage: Stage, pred: Any, timeout: float, what: str, seen: int = 0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in stage.records[seen:]:
            if pred(rec):
                return rec
        seen = len(stage.records)
        stage.poll_records(0.3)
    raise AssertionError(f"no {what} within {timeout} s: {stage.records[-6:]} {stage.stderr_tail()}")


def test_on_demand_traffic_brings_the_tunnel_up_and_back(world: World) -> None:
    daemon = world.start_cafe_daemon("--on-demand", "--idle-timeout", "2", "--keep-warm", "0", "--verbose")
    recs, codes = resolve_into_tunnel_up(world, "arm-imac", HOME_LABEL)
    assert codes == [0, 0], (codes, recs)
    armed = tunnels(recs, "armed")
    assert len(armed) == 1 and not tunnels(recs, "up"), recs
    ula = armed[0]["inner_remote"]
    daemon.poll_records(0.5)
    assert not tunnels(daemon.records, "up"), "an armed peer must not negotiate before traffic"
    assert status(world, lambda b: b.get("armed"))["armed"] == [ula]
    # TCP to the ULA: the SYN waits in the datapath while IKE runs, then the tunnel carries it
    body, _ = world.fetch(ula)
    assert "hello from Bob’s iMac" in body
    wait_records(daemon, lambda r: r.get("state") == "up", 5, "tunnel up")
    states = [r["state"] for r in daemon.records if r.get("type") == "tunnel"]
    assert states[:3] == ["armed", "triggered", "up"], states
    # idle close (2 s): the peer stays armed, and the next packet brings the tunnel back
    down = wait_records(daemon, lambda r: r.get("state") == "down", 15, "idle close")
    assert down["reason"] == "idle"
    n_up, seen = len(tunnels(daemon.records, "up")), len(daemon.records)
    assert world.ping(ula, wait=5), f"ping6 after the idle close got no reply: {daemon.stderr_tail(12)}"
    wait_records(daemon, lambda r: r.get("state") == "up", 5, "tunnel back up", seen)
    assert len(tunnels(daemon.records, "up")) == n_up + 1
    assert tunnels(daemon.records, "triggered")[-1]["inner_remote"] == ula


def test_keep_warm_zero_reaches_the_datapath(world: World) -> None:
    """The on-demand daemon above runs with --keep-warm 0: its datapath says so, and it carried
    traffic; a value out of range is refused before anything starts."""
    body = status(world)
    assert body["keep_warm"] == 0.0, body
    bad = subprocess.run([bin_path("btmm-tunnel-up"), "--listen", "--keep-warm", "-1"], env=world.env("cafe"),
                         capture_output=True, text=True, check=False, timeout=30)
    assert bad.returncode == 2 and "--keep-warm" in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert world.stop_stage("cafe-daemon")[-1] == 0


def test_on_demand_all_finds_the_host_of_a_ula(world: World) -> None:
    """--on-demand-all: no record at all; traffic to a ULA of the account finds its host in DNS."""
    import ipaddress

    assert world.account_file is not None
    vps = load_host(str(world.account_file), "vps", str(world.workdir / "vps-state"))
    daemon = world.start_cafe_daemon("--on-demand-all")
    body, _ = world.fetch(str(vps.ula))
    assert "hello from Bob’s VPS" in body
    up = wait_records(daemon, lambda r: r.get("state") == "up", 5, "tunnel up")
    assert up["inner_remote"] == str(vps.ula) and up["found_by"] == "ula" and up["host"] == vps.fqdn
    states = [(r.get("state"), r.get("scope")) for r in daemon.records if r.get("type") == "tunnel"]
    assert states[:4] == [("armed", "account"), ("armed", None), ("triggered", None), ("up", None)], states
    # a ULA of the account that no host advertises: looked up once, an error record says why
    nobody = str(ipaddress.IPv6Network(str(vps.account.ula_prefix))[0x1234])
    assert not world.ping(nobody, wait=1)
    err = wait_records(daemon, lambda r: r.get("type") == "error", 5, "error record")
    assert err["reason"] == "unknown_ula" and nobody in err["error"]
    assert world.stop_stage("cafe-daemon")[-1] == 0


def test_light_defaults_match_the_datapath_and_account_file() -> None:
    """tools/tunnel_up.py repeats a few values so that its parser does not import esp_udp;
    they must stay the same. The state directory is account_file's own function (that module
    loads cryptography only for a host identity)."""
    from esp_udp import datapath
    from tools import account_file, tunnel_up

    assert (tunnel_up.DEFAULT_PORT, tunnel_up.DEFAULT_TUN, tunnel_up.DEFAULT_MTU) == (
        datapath.DEFAULT_PORT, datapath.DEFAULT_TUN, datapath.DEFAULT_MTU)
    assert tunnel_up.control_path.__globals__["state_dir"] is account_file.state_dir


def test_control_socket_under_a_long_state_dir(tmp_path: Path) -> None:
    """sun_path holds 107 bytes: a deeper state dir still gets its control socket (via /proc/self/fd)."""
    from tools.tunnel_ike import ControlConn, ControlServer
    from tools.tunnel_up import connect_control

    path = tmp_path / ("d" * 60) / ("e" * 60) / "tunnel-up.sock"
    assert len(os.fsencode(path)) > 107
    clients: list[ControlConn] = []
    server = ControlServer(path, clients.append)
    server.serve()
    try:
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        sock = connect_control(path)
        assert sock is not None
        sock.close()
        deadline = time.monotonic() + 5
        while not clients and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(clients) == 1
    finally:
        server.close()
    assert connect_control(path) is None  # nothing listens any more
