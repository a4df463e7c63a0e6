"""Inner IPv4 through the tunnel: a peer with an inner IPv4 /32 next to its ULA — cryptokey
routing by IPv4 destination, next header 4, the ingress filter on the peer's inner IPv4,
checksum offload (A lets the kernel leave TCP checksums to it; B's plain TUN verifies them),
and on-demand announcements for IPv4 destinations."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import subprocess
import sys
import threading

import pytest

from esp_udp.esp import OutboundSA
from esp_udp.sa import Suite
from tests.esp.nslib import datapath_in, sa_pair
from tools.netns import Lab, wait_for

A_INNER, B_INNER = "fd00:7::a", "fd00:7::b"
A4, B4 = "10.77.0.1", "10.77.0.2"
A_OUTER, B_OUTER = ("198.18.8.1", 4500), ("198.18.8.2", 4500)

pytestmark = pytest.mark.netns

SERVER = """
import hashlib, socket, sys
s = socket.socket(socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5003)); s.listen(1); s.settimeout(60)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(60)
h = hashlib.sha256(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""

CLIENT = """
import socket, sys
data = bytes(range(256)) * 4096
c = socket.create_connection((sys.argv[1], 5003), timeout=60)
for _ in range(int(sys.argv[2])):
    c.sendall(data)
c.close()
"""


def transfer(lab: Lab, server_ns: str, client_ns: str, dst: str, mib: int) -> tuple[int, str]:
    server = lab.popen(server_ns, [sys.executable, "-c", SERVER, dst], stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    client = lab.popen(client_ns, [sys.executable, "-c", CLIENT, dst, str(mib)])
    assert client.wait(timeout=60) == 0
    result = server.stdout.readline().decode().split()
    server.wait(timeout=30)
    return int(result[0]), result[1]


def ping4(lab: Lab, ns: str, dst: str, count: int = 3) -> int:
    proc = lab.run(ns, ["ping", "-4", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "1", dst],
                   check=False, timeout=30)
    for line in proc.stdout.decode().splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


def test_inner_ipv4() -> None:
    demands: list[str] = []
    lock = threading.Lock()

    def on_demand(dest: str) -> None:
        with lock:
            demands.append(dest)

    with Lab() as lab:
        ns_a, ns_b = lab.ns("v4a"), lab.ns("v4b")
        lab.veth(ns_a, "va", ns_b, "vb")
        lab.addr(ns_a, "va", "198.18.8.1/24")
        lab.addr(ns_b, "vb", "198.18.8.2/24")
        pa, pb = sa_pair(Suite.AES256GCM16, A_INNER, A_OUTER, B_INNER, B_OUTER, spi_base=0x7000)
        pa = dataclasses.replace(pa, inner4=ipaddress.IPv4Address(B4))
        pb = dataclasses.replace(pb, inner4=ipaddress.IPv4Address(A4))
        assert pa.to_json()["inner4"] == B4 and pa.from_json(pa.to_json()) == pa
        a = datapath_in(ns_a, A_INNER, local_inner4=A4, tso=True, on_demand=on_demand)
        b = datapath_in(ns_b, B_INNER, local_inner4=B4, offload=False)
        try:
            a.add_peer(pa)
            b.add_peer(pb)
            routes = lab.run(ns_a, ["ip", "-4", "route", "show", "dev", "btmm0"]).stdout.decode()
            assert f"{B4} " in routes and "mtu 1280" in routes
            assert ping4(lab, ns_a, B4) == 3
            assert ping4(lab, ns_b, A4) == 3
            # IPv6 keeps working in the same tunnel
            v6 = lab.run(ns_a, ["ping", "-6", "-n", "-q", "-c", "2", "-i", "0.05", "-W", "1", B_INNER],
                         check=False, timeout=30).stdout.decode()
            assert " 2 received" in v6
            peer_a = a.counters()["peers"][0]
            assert peer_a["inner4"] == B4 and peer_a["packets_out"] == 3 + 3 + 2
            assert a.counters()["local4"] == A4

            # TCP both ways: A hands B TCP segments whose checksums A finished (B's plain TUN
            # makes B's kernel verify them); B→A goes through A's coalescing write path.
            want = hashlib.sha256((bytes(range(256)) * 4096) * 2).hexdigest()
            assert transfer(lab, ns_b, ns_a, B4, 2) == (2 << 20, want)
            assert transfer(lab, ns_a, ns_b, A4, 2) == (2 << 20, want)

            # Ingress filter: B authenticates an IPv4 packet from an address not its own.
            from scapy.layers.inet import ICMP, IP

            spoofed = bytes(IP(src="10.77.0.9", dst=A4) / ICMP())
            forger = OutboundSA(pb.spi_out, pb.suite, pb.key_out)
            forger.seq = 1 << 20
            code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                    "s.sendto(bytes.fromhex(sys.argv[1]),('198.18.8.1',4500))\n")
            lab.run(ns_b, [sys.executable, "-c", code, forger.seal(spoofed, 4).hex()])
            wait_for(lambda: a.counters()["peers"][0]["drop_reasons"].get("bad_inner", 0) == 1, 5,
                     what="bad_inner drop")

            # On-demand for an IPv4 destination in a routed prefix.
            a.route_prefix("10.77.0.0/16")
            assert ping4(lab, ns_a, "10.77.5.5", count=1) == 0
            wait_for(lambda: "10.77.5.5" in demands, 5, what="on_demand for 10.77.5.5")
            assert a.counters()["pending"].get("10.77.5.5") == 1

            a.remove_peer(B_INNER)
            routes = lab.run(ns_a, ["ip", "-4", "route", "show", "dev", "btmm0"]).stdout.decode()
            assert f"{B4} " not in routes
        finally:
            a.close()
            b.close()
