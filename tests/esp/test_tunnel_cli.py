"""btmm-tunnel-up --static-keys, the real console script, in three namespaces:

    host (10.6.0.2, behind NAT) ── router (nft masquerade) ── peer (198.18.6.2, public)

One topology serves every test in this module (in order): ping6 and a TCP transfer between
the ULAs; ping between the inner IPv4 addresses (``inner4`` in the local section and the
peer entry of the file); tampered and replayed packets injected on the wire are dropped and counted (read
from the status file btmm-status reads); the keylog decrypts a capture in tshark; the NAT
changes the outer port mid-flow and the TCP transfer continues; SIGTERM tears down cleanly.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from esp_udp.sa import SAParams, Suite
from tests.conftest import script
from tests.esp.nslib import TCP_CLIENT, TCP_SERVER, expected_digest
from tests.esp.nslib import ping as nslib_ping
from tools.netns import Lab, require_binary, wait_for

# The CLI topology runs tunnel-up processes: a little more patience per echo than the API tests.
ping = partial(nslib_ping, interval="0.1", wait="2", timeout=60)

pytestmark = pytest.mark.netns

H_INNER, P_INNER = "fd00:6::a", "fd00:6::b"
H_INNER4, P_INNER4 = "10.96.0.1", "10.96.0.2"
ROUTER_PUBLIC, PEER_PUBLIC = "198.18.6.1", "198.18.6.2"
NFT_NAT = """
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    %soifname "rp" masquerade
  }
}
"""

@dataclass
class Tunnel:
    proc: subprocess.Popen[bytes]
    state: Path
    lines: list[dict[str, Any]] = field(default_factory=list)

    def start_reader(self) -> None:
        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                self.lines.append(json.loads(raw))

        threading.Thread(target=read, daemon=True).start()

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state / "status" / "tunnels.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data

    def counters(self) -> dict[str, Any]:
        tunnels = self.status().get("tunnels") or [{}]
        counters: dict[str, Any] = tunnels[0].get("counters", {})
        return counters


@dataclass
class Topo:
    lab: Lab
    host: str
    router: str
    peer: str
    tmp: Path
    h: Tunnel
    p: Tunnel
    keylog: Path


def write_keys(path: Path, inner: str, inner4: str, params: SAParams, keepalive: bool) -> None:
    body = {"local": {"inner": inner, "inner4": inner4, "port": 4500},
            "peers": [dict(params.to_json(), keepalive=keepalive)]}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topo]:
    tmp = tmp_path_factory.mktemp("esp-cli")
    with Lab() as lab:
        host, router, peer = lab.ns("h"), lab.ns("r"), lab.ns("p")
        lab.veth(host, "hr", router, "rh")
        lab.veth(router, "rp", peer, "pr")
        lab.addr(host, "hr", "10.6.0.2/24")
        lab.addr(router, "rh", "10.6.0.1/24")
        lab.addr(router, "rp", f"{ROUTER_PUBLIC}/24")
        lab.addr(peer, "pr", f"{PEER_PUBLIC}/24")
        lab.route(host, "default", "via", "10.6.0.1")
        lab.sysctl(router, "net.ipv4.ip_forward", "1")
        lab.nft(router, NFT_NAT % "")
        suite = Suite.AES256GCM16
        keys_p = SAParams(ipaddress.IPv6Address(H_INNER), (ROUTER_PUBLIC, 4500), suite, 0x6001, 0x6002,
                          os.urandom(36), os.urandom(36), inner4=ipaddress.IPv4Address(H_INNER4))
        keys_h = keys_p.mirrored(ipaddress.IPv6Address(P_INNER), (PEER_PUBLIC, 4500),
                                 inner4=ipaddress.IPv4Address(P_INNER4))
        write_keys(tmp / "h.json", H_INNER, H_INNER4, keys_h, keepalive=True)
        write_keys(tmp / "p.json", P_INNER, P_INNER4, keys_p, keepalive=False)
        keylog = tmp / "esp.keys"
        tunnels = []
        for ns, name, extra in ((host, "h", ["--keylog", str(keylog)]), (peer, "p", [])):
            state = tmp / f"state-{name}"
            proc = lab.popen(ns, [script("btmm-tunnel-up"), "--static-keys", str(tmp / f"{name}.json"),
                                  "--json", "--state-dir", str(state), *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            tunnel = Tunnel(proc, state)
            tunnel.start_reader()
            tunnels.append(tunnel)
        for tunnel in tunnels:
            wait_for(lambda t=tunnel: bool(t.lines) or t.proc.poll() is not None, 15,
                     what="tunnel record")
            assert tunnel.lines, tunnel.proc.stderr.read().decode() if tunnel.proc.stderr else ""
        yield Topo(lab, host, router, peer, tmp, tunnels[0], tunnels[1], keylog)



def tcp_transfer(topo: Topo, chunks: int, pause: float,
                 during: Any = None) -> tuple[int, str]:
    server = topo.lab.popen(topo.peer, [sys.executable, "-c", TCP_SERVER, P_INNER],
                            stdout=subprocess.PIPE)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == b"ready"
    client = topo.lab.popen(topo.host, [sys.executable, "-c", TCP_CLIENT, P_INNER, str(chunks),
                                        str(pause)])
    if during is not None:
        during()
    assert client.wait(timeout=90) == 0
    result = server.stdout.readline().decode().split()
    server.wait(timeout=30)
    return int(result[0]), result[1]


def test_tunnel_records(topo: Topo) -> None:
    record = topo.h.lines[0]
    assert record["type"] == "tunnel" and record["state"] == "up"
    assert (record["inner_local"], record["inner_remote"], record["peer"]) == (H_INNER, P_INNER, P_INNER)
    assert record["outer"] == f"{PEER_PUBLIC}:4500" and record["suite"] == "aes256gcm16"
    assert (record["spi_in"], record["spi_out"]) == ("00006002", "00006001")
    assert "key_in" not in record and "key_out" not in record
    assert oct(topo.keylog.stat().st_mode & 0o777) == "0o600"


def test_ping_and_tcp(topo: Topo) -> None:
    assert ping(topo.lab, topo.host, P_INNER) == 3
    assert ping(topo.lab, topo.peer, H_INNER) == 3
    assert tcp_transfer(topo, 4, 0.0) == (4 << 20, expected_digest(4))
    wait_for(lambda: topo.p.counters().get("packets_in", 0) > 1000, 5, what="status counters")


def test_inner_ipv4_from_the_file(topo: Topo) -> None:
    """local.inner4 puts the /32 on each TUN; the peer's inner4 routes through the tunnel."""
    addrs = topo.lab.run(topo.host, ["ip", "-4", "-o", "addr", "show", "dev", "btmm0"]).stdout.decode()
    assert f"{H_INNER4}/32" in addrs
    before = topo.p.counters().get("packets_in", 0)
    assert ping(topo.lab, topo.host, P_INNER4) == 3
    assert ping(topo.lab, topo.peer, H_INNER4) == 3
    wait_for(lambda: topo.p.counters().get("packets_in", 0) >= before + 3, 5, what="status counters")


def capture_esp(topo: Topo, count: int) -> list[bytes]:
    """ESP datagrams host→peer as seen on the public link (after the NAT)."""
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    pcap = topo.tmp / f"cap{time.monotonic_ns()}.pcap"
    tcpdump = topo.lab.popen(topo.router, [
        require_binary("tcpdump", "tcpdump"), "-i", "rp", "-U", "-c", str(count), "-w", str(pcap),
        f"udp and dst host {PEER_PUBLIC} and dst port 4500 and udp[4:2] > 40"],
        stderr=subprocess.PIPE)
    assert tcpdump.stderr is not None
    tcpdump.stderr.readline()  # "listening on rp ..."
    ping(topo.lab, topo.host, P_INNER, count=count)
    tcpdump.wait(timeout=20)
    return [bytes(p[UDP].payload) for p in rdpcap(str(pcap))]


def inject(topo: Topo, datagrams: list[bytes]) -> None:
    code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "for h in sys.argv[2:]: s.sendto(bytes.fromhex(h),(sys.argv[1],4500))\n")
    topo.lab.run(topo.router, [sys.executable, "-c", code, PEER_PUBLIC, *(d.hex() for d in datagrams)])


def test_tampered_and_replayed_dropped_and_counted(topo: Topo) -> None:
    packets = capture_esp(topo, 2)
    assert len(packets) == 2
    before = topo.p.counters()
    replayed = packets[0]
    tampered = bytearray(packets[1])
    tampered[4:8] = (0x7FFFFFF0).to_bytes(4, "big")  # far ahead: passes the pre-check, fails the ICV
    flipped = bytearray(packets[1])
    flipped[-1] ^= 0x01
    flipped[4:8] = (0x7FFFFFF1).to_bytes(4, "big")
    inject(topo, [replayed, bytes(tampered), bytes(flipped), replayed[:20]])
    wait_for(lambda: topo.p.counters().get("auth_failures", 0) >= before.get("auth_failures", 0) + 2
             and topo.p.counters().get("replays", 0) >= before.get("replays", 0) + 1, 5,
             what="drop counters at the peer")
    after = topo.p.counters()
    assert after["auth_failures"] == before["auth_failures"] + 2
    assert after["replays"] == before["replays"] + 1
    assert after["drop_reasons"].get("truncated", 0) == before["drop_reasons"].get("truncated", 0) + 1
    # The forged sequence numbers did not move the window: normal traffic still flows.
    assert ping(topo.lab, topo.host, P_INNER) == 3
    assert topo.p.status()["tunnels"][0]["outer"] == f"{ROUTER_PUBLIC}:4500"  # no false rebinding


def test_keylog_decrypts_capture(topo: Topo) -> None:
    pcap = topo.tmp / "keylog.pcap"
    tcpdump = topo.lab.popen(topo.router, [
        require_binary("tcpdump", "tcpdump"), "-i", "rp", "-U", "-c", "4", "-w", str(pcap),
        "udp port 4500 and udp[4:2] > 40"], stderr=subprocess.PIPE)
    assert tcpdump.stderr is not None
    tcpdump.stderr.readline()
    ping(topo.lab, topo.host, P_INNER, count=2)
    tcpdump.wait(timeout=20)
    conf = topo.tmp / "wireshark"
    conf.mkdir(exist_ok=True)
    (conf / "esp_sa").write_text(topo.keylog.read_text())
    out = subprocess.run([require_binary("tshark", "tshark"), "-r", str(pcap), "-o",
                          "esp.enable_encryption_decode:TRUE", "-Y", "icmpv6", "-T", "fields",
                          "-e", "ipv6.src", "-e", "ipv6.dst", "-e", "icmpv6.type"],
                         capture_output=True, env=dict(os.environ, WIRESHARK_CONFIG_DIR=str(conf)),
                         timeout=60, check=False)
    rows = [line.split("\t") for line in out.stdout.decode().splitlines()]
    assert [H_INNER, P_INNER, "128"] in rows and [P_INNER, H_INNER, "129"] in rows, out


def test_nat_port_change_mid_flow(topo: Topo) -> None:
    def remap() -> None:
        time.sleep(1.0)
        remapped = NFT_NAT % 'oifname "rp" meta l4proto udp masquerade to :40000-40099\n    '
        topo.lab.nft(topo.router, "flush ruleset\n" + remapped)
        topo.lab.run(topo.router, [require_binary("conntrack", "conntrack"), "-D", "-p", "udp"],
                     check=False)

    assert tcp_transfer(topo, 6, 0.4, during=remap) == (6 << 20, expected_digest(6))
    outer = topo.p.status()["tunnels"][0]["outer"]
    address, port = outer.rsplit(":", 1)
    assert address == ROUTER_PUBLIC and 40000 <= int(port) <= 40099
    events = [r for r in topo.p.lines if r.get("event") == "nat_rebind"]
    assert events and events[-1]["outer"] == outer
    assert ping(topo.lab, topo.peer, H_INNER) == 3


def test_sigterm_tears_down(topo: Topo) -> None:
    for tunnel, ns in ((topo.h, topo.host), (topo.p, topo.peer)):
        tunnel.proc.send_signal(signal.SIGTERM)
        assert tunnel.proc.wait(timeout=15) == 0
        wait_for(lambda t=tunnel: t.lines[-1].get("state") == "down", 5,
                 what="down record")
        down = tunnel.lines[-1]
        assert down["type"] == "tunnel" and down["counters"]["packets_in"] > 0
        assert topo.lab.run(ns, ["ip", "link", "show", "btmm0"], check=False).returncode != 0
        assert not (tunnel.state / "status" / "tunnels.json").exists()
