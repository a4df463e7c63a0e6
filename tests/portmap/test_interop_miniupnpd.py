"""btmm-map-port against miniupnpd 2.3.1 on a real nftables NAT (namespaces home / router / peer).

One topology for the module (tools.peers.miniupnpd): the "internet" namespace with the
STUN server, a home router running miniupnpd with STUN (forwarding works) and a second
router without STUN on a reserved 198.18 WAN (what a double NAT looks like to miniupnpd).
Every test runs the installed console script inside the LAN namespace, as a user would.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import script
from tools.netns import Lab
from tools.peers.miniupnpd import HomeRouter, Internet

pytestmark = [pytest.mark.netns, pytest.mark.peer]

MAP_PORT = script("btmm-map-port")

ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
for _ in range(10000):
    data, peer = s.recvfrom(2048)
    s.sendto(b"pong:" + data + b" from " + peer[0].encode(), peer)
"""

PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(float(sys.argv[4]))
s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recv(2048).decode())
except (TimeoutError, ConnectionRefusedError) as exc:
    print("no-reply", type(exc).__name__)
"""

# A NAT-PMP-only gateway (RFC 6886 §3.5): version != 0 gets an 8-byte UNSUPPORTED_VERSION.
NATPMP_ONLY = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 5351))
print("ready", flush=True)
for _ in range(100):
    data, peer = s.recvfrom(2048)
    print("request", data.hex(), flush=True)
    if data[0] != 0:
        s.sendto(struct.pack("!BBHI", 0, 128 + data[1], 1, 42), peer)
    elif data[1] == 0:
        s.sendto(struct.pack("!BBHI4s", 0, 128, 0, 42, bytes([198, 18, 7, 7])), peer)
    elif data[1] == 1:
        _, _, _, iport, eport, life = struct.unpack("!BBHHHI", data)
        s.sendto(struct.pack("!BBHIHHI", 0, 129, 0, 42, iport, eport or iport, life), peer)
"""


@dataclass
class Topology:
    lab: Lab
    inet: Internet
    home: HomeRouter
    cgn: HomeRouter
    state_dir: Path
    echo: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    base = tmp_path_factory.mktemp("portmap-interop")
    with Lab() as lab:
        inet = Internet(lab, workdir=base)
        home = HomeRouter(lab, "home", inet.ns, "198.18.1.2/24", "10.77.0.0/24", workdir=base / "home")
        cgn = HomeRouter(lab, "cgn", inet.ns, "198.18.2.2/24", "10.78.0.0/24", stun=False,
                         workdir=base / "cgn")
        echo = lab.popen(home.lan_ns, [sys.executable, "-c", ECHO_SERVER, "4500"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
        yield Topology(lab, inet, home, cgn, base / "state", echo)


def run_map_port(t: Topology, ns: str, *args: str,
                 timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    return t.lab.run(ns, [MAP_PORT, "--json", "--state-dir", str(t.state_dir), *args],
                     check=False, timeout=timeout, env=_env())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["COLUMNS"] = "200"
    env.pop("BTMM_DEBUG", None)
    return env


def records(proc: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


def probe(t: Topology, dst: str, port: int, src_port: int, timeout: float = 1.0) -> str:
    """Send one UDP datagram from the peer namespace; the reply text or 'no-reply …'."""
    out = t.lab.run(t.inet.ns, [sys.executable, "-c", PROBE, dst, str(port), str(src_port), str(timeout)],
                    timeout=timeout + 10)
    return out.stdout.decode().strip()


class Watcher:
    """btmm-map-port --watch in a namespace, read line by line with a deadline."""

    def __init__(self, t: Topology, ns: str, *args: str) -> None:
        self.t = t
        self.proc = t.lab.popen(ns, [MAP_PORT, "--state-dir", str(t.state_dir), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        self.sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def next_record(self, timeout: float = 15.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        if not self.sel.select(timeout):
            self.proc.kill()
            raise AssertionError(f"no record within {timeout}s; stderr: {self.stderr()}")
        line = self.proc.stdout.readline()
        assert line, f"btmm-map-port exited ({self.proc.wait()}): {self.stderr()}"
        record: dict[str, Any] = json.loads(line)
        return record

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=15)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()


@pytest.mark.parametrize("protocol", ["pcp", "nat-pmp"])
def test_map_once_reports_external_address_and_installs_the_rule(topo: Topology, protocol: str) -> None:
    port = 4601 if protocol == "pcp" else 4602
    result = run_map_port(topo, topo.home.lan_ns, "--once", "--protocol", protocol,
                          "--internal-port", str(port), "--lifetime", "600")
    assert result.returncode == 0, result.stderr.decode()
    [record] = records(result)
    assert record["type"] == "port-mapping" and record["v"] == 1
    assert record["protocol"] == protocol
    assert (record["external_address"], record["external_port"], record["internal_port"]) == (
        topo.home.router_wan, port, port)
    assert record["gateway"] == topo.home.router_lan and record["lifetime"] == 600
    assert isinstance(record["epoch"], int) and record["state"] == "mapped"
    rules = topo.home.rules()
    assert f"dport {port} dnat ip to {topo.home.host_addr}:{port}" in rules
    # natpmpc (libnatpmp) as an independent oracle for the public address.
    oracle = topo.lab.run(topo.home.lan_ns, ["natpmpc", "-g", topo.home.router_lan]).stdout.decode()
    assert f"Public IP address : {record['external_address']}" in oracle


def test_datagram_from_the_peer_reaches_udp_4500_and_delete_on_exit(topo: Topology) -> None:
    watcher = Watcher(topo, topo.home.lan_ns)  # stdout is a pipe: JSON lines and --watch by default
    record = watcher.next_record()
    assert (record["external_port"], record["state"]) == (4500, "mapped")
    reply = probe(topo, record["external_address"], record["external_port"], src_port=40001)
    assert reply == f"pong:ping from {topo.home.wan_peer}", reply
    assert watcher.stop() == 0, watcher.stderr()
    assert "dport 4500 " not in topo.home.rules()
    # A new flow (fresh source port, so no conntrack entry) no longer gets through.
    assert probe(topo, record["external_address"], 4500, src_port=40002).startswith("no-reply")


def test_router_restart_is_noticed_and_the_mapping_recreated(topo: Topology) -> None:
    watcher = Watcher(topo, topo.home.lan_ns, "--watch", "--json", "--lifetime", "3600")
    first = watcher.next_record()
    mapped_at = time.monotonic()
    assert first["state"] == "mapped"
    # RFC 6887 §8.5 tolerates 2 s of epoch drift: wait until the epoch a restart drops back
    # to 0 from is clearly above that.
    time.sleep(max(0.0, mapped_at + 3.5 - first["epoch"] - time.monotonic()))
    topo.home.restart()  # like a reboot: miniupnpd restarts with an empty table and epoch 0
    second = watcher.next_record(timeout=20)
    assert second["state"] == "remapped", second
    assert second["epoch"] <= 1
    assert (second["external_address"], second["external_port"]) == (first["external_address"], 4500)
    assert "dport 4500 dnat" in topo.home.rules()
    reply = probe(topo, second["external_address"], 4500, src_port=40003)
    assert reply.startswith("pong:ping"), reply
    assert watcher.stop(signal.SIGINT) == 0
    assert "the router restarted" in watcher.stderr()


@pytest.mark.parametrize(("protocol", "code"), [("auto", "NO_RESOURCES"), ("nat-pmp", "NETWORK_FAILURE")])
def test_reserved_outside_address_is_reported_as_double_nat(topo: Topology, protocol: str, code: str) -> None:
    result = run_map_port(topo, topo.cgn.lan_ns, "--once", "--protocol", protocol)
    err = result.stderr.decode()
    assert result.returncode == 3, err
    assert result.stdout == b""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "double NAT or carrier-grade NAT" in err and code in err
    assert "btmm-register --outer ADDR:PORT" in err


def test_not_authorized_port(topo: Topology) -> None:
    result = run_map_port(topo, topo.home.lan_ns, "--once", "--internal-port", "80")
    err = result.stderr.decode()
    assert result.returncode == 3, err
    assert "NOT_AUTHORIZED" in err and "refused to map UDP 80" in err


@pytest.mark.parametrize("protocol", ["pcp", "nat-pmp"])
def test_a_different_external_port_is_reported(topo: Topology, protocol: str) -> None:
    base = 4700 if protocol == "pcp" else 4710
    first = run_map_port(topo, topo.home.lan_ns, "--once", "--protocol", protocol,
                         "--internal-port", str(base), "--external-port", str(base + 1))
    assert first.returncode == 0 and records(first)[0]["external_port"] == base + 1
    second = run_map_port(topo, topo.home.lan_ns, "--once", "--protocol", protocol,
                          "--internal-port", str(base + 1))
    assert second.returncode == 0, second.stderr.decode()
    [record] = records(second)
    assert record["internal_port"] == base + 1 and record["external_port"] != base + 1
    assert f"instead of {base + 1}" in second.stderr.decode()
    assert f"dport {record['external_port']} dnat ip to {topo.home.host_addr}:{base + 1}" in topo.home.rules()


def test_no_gateway_answering(topo: Topology) -> None:
    start = time.monotonic()
    result = run_map_port(topo, topo.home.lan_ns, "--once", "--gateway", "10.77.0.99", "--attempts", "2")
    err = result.stderr.decode()
    assert result.returncode == 3, err
    assert "no NAT-PMP or PCP answer from the gateway 10.77.0.99" in err
    assert "btmm-register --outer ADDR:PORT" in err
    assert time.monotonic() - start < 20


def test_gateway_refusing_udp_5351(topo: Topology) -> None:
    """A host that answers ICMP port unreachable (the peer side of the WAN link)."""
    result = run_map_port(topo, topo.home.lan_ns, "--once", "--gateway", topo.home.wan_peer,
                          "--attempts", "2")
    err = result.stderr.decode()
    assert result.returncode == 3, err
    assert "ICMP port unreachable" in err and "no NAT-PMP or PCP answer" in err


def test_pcp_falls_back_to_natpmp_on_a_natpmp_only_gateway(topo: Topology) -> None:
    ns = topo.lab.ns("natpmp-only")
    server = topo.lab.popen(ns, [sys.executable, "-c", NATPMP_ONLY], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    result = run_map_port(topo, ns, "--once", "--gateway", "127.0.0.1", "-v")
    assert result.returncode == 0, result.stderr.decode()
    [record] = records(result)
    assert (record["protocol"], record["external_address"], record["external_port"]) == (
        "nat-pmp", "198.18.7.7", 4500)
    assert "falling back to NAT-PMP" in result.stderr.decode()
    assert server.stdout is not None
    requests = [server.stdout.readline().decode().split()[1] for _ in range(3)]
    topo.lab.stop(server)
    assert requests[0].startswith("0201") and requests[1:] == ["0000", "000100001194119400001c20"]


def test_no_default_route_is_a_clear_error(topo: Topology) -> None:
    ns = topo.lab.ns("no-route")
    result = run_map_port(topo, ns, "--once")
    err = result.stderr.decode()
    assert result.returncode == 3, err
    assert "no default IPv4 route" in err and "--gateway ADDR" in err and len(err.strip().splitlines()) == 1


def test_announced_address_change_is_reported(topo: Topology) -> None:
    """miniupnpd announces a new WAN address (SIGUSR1 makes it re-check) on 224.0.0.1:5350."""
    home = topo.home
    watcher = Watcher(topo, home.lan_ns, "--watch", "--json", "--internal-port", "4800")
    first = watcher.next_record()
    assert first["external_address"] == home.router_wan
    pid = int((home.conf_path.parent / "miniupnpd.pid").read_text())
    try:
        topo.lab.run(home.router_ns, ["ip", "addr", "del", home.wan_addr, "dev", home.WAN_IF])
        topo.lab.run(home.router_ns, ["ip", "addr", "add", "198.18.1.3/24", "dev", home.WAN_IF])
        topo.lab.route(home.router_ns, "default", "via", home.wan_peer)
        os.kill(pid, signal.SIGUSR1)
        second = watcher.next_record()
        assert second["external_address"] == "198.18.1.3" and second["external_port"] == 4800
        assert second["state"] in ("changed", "remapped")
        assert "dport 4800 dnat" in home.rules()
        assert watcher.stop() == 0, watcher.stderr()
    finally:
        topo.lab.run(home.router_ns, ["ip", "addr", "flush", "dev", home.WAN_IF])
        topo.lab.run(home.router_ns, ["ip", "addr", "add", home.wan_addr, "dev", home.WAN_IF])
        topo.lab.route(home.router_ns, "default", "via", home.wan_peer)
        os.kill(pid, signal.SIGUSR1)
